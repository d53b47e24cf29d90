"""``compress bench-android``, host side: which TFLite files to time, the host's accuracy for each (the phone
runs the very same file), the timing on the phone (deploy/android.py) and the merge into the run's report."""
from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from pipeline.errors import UserError


def bench(run, cfg, acfg, names: list[str]) -> Path:
    """Time ``names`` (TFLite formats; all written ones when empty) on the phone and merge the result."""
    from deploy import android
    from deploy.runner import results_doc
    from pipeline.export import formats, inventory
    from pipeline.report import write
    from pipeline.report.results import DEVICES, load_results

    android.check_delegate(acfg)
    manifest = run.manifest()
    names = names or [a["artifact"] for a in inventory.artifacts(run.root, manifest)
                      if a["runtime"] == "tflite" and "path" in a]
    fmts = [formats.get(n) for n in names]
    bad = [f.name for f in fmts if f.runtime != "tflite"]
    if bad or not fmts:
        raise UserError(f"bench-android runs .tflite models only (got {', '.join(bad) or 'none'}); "
                        "run 'compress quantize' first or name a tflite_* format")
    results = run.root / "benchmark" / "results.json"
    if not results.is_file():
        raise UserError(f"{results} is missing; run 'compress benchmark' first (the phone's rows are merged "
                        "into its report and take their accuracy from it)")
    host = {r["artifact"]: r for r in load_results(results)["rows"]}
    phone, rows = android.measure(acfg, [(f, inventory.locate(run.root, manifest, f.name)) for f in fmts], host)
    write.measured(rows, phone["device"])
    doc = results_doc(inventory.run_info(run.root, manifest), phone, {"android": dataclasses.asdict(acfg)}, rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "android.json"
        path.write_text(json.dumps(doc))
        write.add(run, [path], cfg.benchmark.max_drop)
    return run.root / "benchmark" / DEVICES
