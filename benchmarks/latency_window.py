"""How long the benchmark stage needs to time each artifact: its latency figures and its recommendation at
several ``benchmark.min_seconds`` windows, each repeated, on a copy of a finished run.

    .venv/bin/python benchmarks/latency_window.py --run runs/default [--config default]
        [--windows 2,1,0.5] [--repeats 3] [--out benchmarks/results/latency_window.json]

Every repeat reruns the whole stage (`compress benchmark --force benchmark`, one child process per artifact, as
a user's run does) once per window, the windows in a rotated order each repeat so a slow minute of the machine
falls on each in turn. Printed per window: the stage's wall time, and for every artifact the median one-thread
p50 over the repeats and its spread (max - min over the repeats, as a share of the median); then whether the
recommended artifact was the same in every repeat. The spread between repeats of one window is the noise a
window must stay inside; a shorter window is as good when its spread is no larger than the longest window's.
Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def one_stage(run: Path, config: str, window: float) -> dict:
    cmd = [str(Path(sys.executable).parent / "compress"), "-c", config, "-r", str(run),
           "--set", f"benchmark.min_seconds={window}", "benchmark", "--force", "benchmark"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    wall = time.perf_counter() - start
    doc = json.loads((run / "benchmark" / "results.json").read_text())
    metrics = json.loads((run / "manifest.json").read_text())["stages"]["benchmark"]["metrics"]
    rows = {r["artifact"]: {"one_thread_p50_ms": r["latency"]["one_thread"]["p50_ms"],
                            "all_cores_p50_ms": r["latency"]["all_cores"]["p50_ms"],
                            "runs": r["latency"]["one_thread"]["runs"]}
            for r in doc["rows"] if r["status"] == "ok"}
    return {"window_s": window, "stage_s": round(wall, 1), "recommended": metrics.get("recommended"), "rows": rows}


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def summarize(trials: list[dict], windows: list[float]) -> None:
    print(f"{'window s':>8} {'stage s':>8}  {'median spread':>13} {'worst spread':>12}  recommended")
    for w in windows:
        mine = [t for t in trials if t["window_s"] == w]
        spreads = {a: spread([t["rows"][a]["one_thread_p50_ms"] for t in mine]) for a in mine[0]["rows"]}
        worst = max(spreads, key=spreads.get)
        picks = sorted({str(t["recommended"]) for t in mine})
        print(f"{w:>8g} {statistics.mean(t['stage_s'] for t in mine):>8.1f}  "
              f"{100 * statistics.median(spreads.values()):>12.1f}% {100 * spreads[worst]:>11.1f}%  "
              f"{', '.join(picks)}   (worst: {worst})")
    print(f"\none-thread p50 ms, median over repeats (window {max(windows):g} s first)")
    for a in trials[0]["rows"]:
        cells = []
        for w in windows:
            mine = [t["rows"][a]["one_thread_p50_ms"] for t in trials if t["window_s"] == w]
            cells.append(f"{statistics.median(mine):.4f} (+-{50 * spread(mine):.1f}%)")
        print(f"  {a:<22} " + "  ".join(cells))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished run folder (copied, not changed)")
    ap.add_argument("--config", default="default")
    ap.add_argument("--windows", default="2,1,0.5", help="benchmark.min_seconds values, comma separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="JSON of every trial")
    args = ap.parse_args()
    if not (args.run / "manifest.json").is_file():
        ap.error(f"{args.run} is not a run folder; run 'compress all' first and pass its folder")
    windows = sorted((float(w) for w in args.windows.split(",")), reverse=True)
    sys.path.insert(0, str(REPO))
    from deploy.runner import cpu_name
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores", flush=True)
    trials = []
    with tempfile.TemporaryDirectory(prefix="latency-window-") as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(args.run, run, ignore=shutil.ignore_patterns(".cache"))
        for r in range(args.repeats):
            for w in windows[r % len(windows):] + windows[:r % len(windows)]:
                trials.append({"repeat": r, **one_stage(run, args.config, w)})
                t = trials[-1]
                print(f"repeat {r} window {w:g} s: stage {t['stage_s']} s, recommended {t['recommended']}", flush=True)
                if args.out:
                    args.out.write_text(json.dumps({"trials": trials}, indent=1) + "\n")
    summarize(trials, windows)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("latency_window: interrupted; the run folder was only copied, and --out holds the trials finished so far",
              file=sys.stderr)
        raise SystemExit(130) from None
