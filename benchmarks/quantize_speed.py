"""The quantize stage's seconds with its converters side by side (as shipped) against one after another.

    .venv/bin/python benchmarks/quantize_speed.py --run-dir runs/photos -c photos --set data.root=/work/photos \
        [--qat off on] [--repeats 1] [--json out.json]

``--run-dir`` is a run folder whose stages up to simplify are done. For each `quantize.qat` value and each way,
the folder is copied and `compress quantize --force quantize` runs in it in a fresh process:

- serial: the baseline, the stage as it was before the converters ran side by side: one litert-torch process
  for every TFLite precision with torch's default threads, started only after the ONNX Runtime files (the
  stage's thread pool replaced by one that runs each job at once, ``tflite_tools.plan`` by a single group);
- side by side: the stage as shipped (``tflite_tools.plan``: int8 alone, the other precisions in a second
  process, each with its share of the cores, while the stage makes the ONNX Runtime files);
- with ``--all-threads`` also "side by side, all threads": the same processes left at torch's default threads
  (every core each), which is why the plan gives each process only its share.

Prints the stage's seconds per way, their ratio, what QAT adds to the stage in each way, and whether every
file's validation and test top-1 are the same both ways (they must be: the same conversions, only the order
differs). One measurement at a time: do not run anything else on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from photo_teacher import cpu_model  # noqa: E402

SERIAL = """
import sys
from concurrent.futures import Future

import pipeline.export.tflite_tools as tflite_tools
import stages.quantize as quantize


class AtOnce:
    def __init__(self, *a, **k):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args, **kwargs):
        done = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            done.set_exception(exc)
        return done


quantize.ThreadPoolExecutor = AtOnce
tflite_tools.plan = lambda precisions, cores: [(list(precisions), None)] if precisions else []
from pipeline.cli import main
sys.argv[0] = "compress"
sys.exit(main())
"""
SHIPPED = "import sys\nfrom pipeline.cli import main\nsys.argv[0] = 'compress'\nsys.exit(main())\n"
ALL_THREADS = ("import pipeline.export.tflite_tools as t\nplan = t.plan\n"
               "t.plan = lambda p, c: [(g, None) for g, _ in plan(p, c)]\n" + SHIPPED)
SCRIPTS = {"serial": SERIAL, "side by side": SHIPPED, "side by side, all threads": ALL_THREADS}


def one(run_dir: Path, way: str, qat: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="quantize-speed-") as tmp:
        folder = Path(tmp) / "run"
        shutil.copytree(run_dir, folder, ignore=shutil.ignore_patterns("benchmark", "bundle", ".cache"))
        cmd = [sys.executable, "-c", SCRIPTS[way], "-c", args.config, "-r", str(folder)]
        for s in [*args.set, f"quantize.qat={qat}"]:
            cmd += ["--set", s]
        started = time.perf_counter()
        proc = subprocess.run([*cmd, "quantize", "--force", "quantize"], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "120"})
        wall = time.perf_counter() - started
        if proc.returncode:
            raise SystemExit(f"{way} qat={qat} failed ({proc.returncode}): {proc.stdout[-800:]}{proc.stderr[-800:]}")
        stage = json.loads((folder / "manifest.json").read_text())["stages"]["quantize"]
    files = {n: [e.get("val_top1"), e.get("test_top1")] for n, e in stage["metrics"]["artifacts"].items()}
    return {"way": way, "qat": qat, "stage_seconds": stage["seconds"], "wall_seconds": round(wall, 1),
            "qat_fine_tune_seconds": stage["metrics"].get("qat", {}).get("total_seconds"),
            "convert_seconds": {n: e.get("convert_seconds") for n, e in stage["metrics"]["artifacts"].items()
                                if e.get("convert_seconds")}, "top1": files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("-c", "--config", default="default")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--qat", nargs="+", default=["off"], choices=["off", "on"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--all-threads", action="store_true", help="also time the side-by-side processes at every thread")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not (args.run_dir / "simplify").is_dir():
        raise SystemExit(f"{args.run_dir} has no simplify/ folder: run 'compress simplify' there first")
    ways = [w for w in SCRIPTS if args.all_threads or "all" not in w]
    rows = []
    for r in range(args.repeats):
        for qat in args.qat:
            for way in (ways if r % 2 == 0 else ways[::-1]):
                rows.append(one(args.run_dir, way, qat, args))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} logical CPUs; config {args.config}; {args.repeats} repeat(s)\n")
    print("| quantize.qat | " + " | ".join(f"{w} s" for w in ways) + " | " +
          " | ".join(f"{w} / serial" for w in ways[1:]) + " | same top-1 |")
    print("|---" * (2 * len(ways) + 1) + "|")
    mean = {}
    for qat in args.qat:
        got = {w: [r for r in rows if r["qat"] == qat and r["way"] == w] for w in ways}
        mean[qat] = {w: sum(r["stage_seconds"] for r in rs) / len(rs) for w, rs in got.items()}
        same = all(r["top1"] == got["serial"][0]["top1"] for rs in got.values() for r in rs)
        print(f"| {qat} | " + " | ".join(f"{mean[qat][w]:.1f}" for w in ways) + " | " +
              " | ".join(f"{mean[qat][w] / mean[qat]['serial']:.2f}x" for w in ways[1:]) +
              f" | {'yes' if same else 'NO'} |")
    if {"off", "on"} <= set(args.qat):
        for w in ways:
            print(f"QAT adds {mean['on'][w] - mean['off'][w]:.1f} s to the stage, {w}")
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu_model(), "cores": os.cpu_count(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
