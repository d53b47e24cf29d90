"""Reporting: what the benchmark stage and ``compress report --add`` write from measured rows. results.py
checks, reads and merges results.json documents; table.py does the table maths (drop, speedup, the front, the
recommendation); markdown.py writes report.md and the terminal table; pareto.py draws pareto.png; plots.py the
training curves the training stages save.

results.json (schema ``compress.results/1``, written by deploy.runner.results_doc on every machine)::

    {"schema", "run": {"run_id", "run_dir"}, "created", "machine": {"device", "cpu", "cores", "arch", "os",
     "python", "runtimes"}, "settings": {...}, "rows": [{"artifact", "format", "runtime", "precision", "bytes",
     "status": "ok" | "failed", "reason", "top1", "top5", "images", "latency": {"one_thread": {"p50_ms",
     "p90_ms", "p99_ms", "mean_ms", "runs", "threads"}, "all_cores": {...}}, "throughput": {"batch",
     "threads", "images_per_s"}, "peak_rss_mb"}]}

A device measured under an emulator (deploy/arm_check.py) has ``machine.emulated`` true and ``machine.qemu``; its
rows carry top-1 and per-image ``predictions`` but no latency: it is an accuracy-only device, kept out of speedups,
recommendations and the Pareto plot, because emulated time says nothing about the board.
"""
