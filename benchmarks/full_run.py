"""`compress all` from an empty run directory, then again (everything skipped), and the figures it gives.

    .venv/bin/python benchmarks/full_run.py [--config default] [--run-dir runs/bench-default] [--keep]

Prints: wall time of the first and the second run, each stage's seconds from the manifest, and from
benchmark/results.json the recommended artifact's speedup over PyTorch eager (batch 1, one thread) and its
top-1 drop against the fp32 distilled student. Targets (issue 5): first run <= 15 min on the 2-core CPU,
second run < 5 s, recommended >= 8x faster than eager with <= 0.5 points drop.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "bench-default")
    parser.add_argument("--keep", action="store_true", help="reuse the run directory instead of emptying it")
    args = parser.parse_args()
    if args.run_dir.exists() and not args.keep:
        shutil.rmtree(args.run_dir)
    cmd = [str(Path(sys.executable).with_name("compress")), "-c", args.config, "-r", str(args.run_dir), "all"]
    first = timed(cmd)
    second = timed(cmd)
    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    doc = json.loads((args.run_dir / "benchmark" / "results.json").read_text())
    sys.path.insert(0, str(ROOT))
    from pipeline import config
    from pipeline.report import table
    rows = table.table(doc)
    device = doc["machine"]["device"]
    best = table.recommended(rows, config.load(args.config).benchmark.max_drop)
    print(f"\nmachine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores, {doc['machine']['os']}")
    print("\n| stage | seconds |\n|---|---|")
    for name, entry in manifest["stages"].items():
        print(f"| {name} | {entry['seconds']:.1f} |")
    print("\n| figure | value | target |\n|---|---|---|")
    print(f"| first `compress all` | {first / 60:.1f} min | <= 15 min |")
    print(f"| second `compress all` (all skipped) | {second:.1f} s | < 5 s |")
    pick = next((r for r in rows if r["artifact"] == best.get(device) and r["device"] == device), None)
    if pick is None:
        print("| recommended artifact | none within the drop limit | - |")
        return
    print(f"| recommended artifact | {pick['artifact']} | - |")
    print(f"| its speedup vs PyTorch eager (batch 1, 1 thread) | {pick.get('speedup', float('nan')):.1f}x | >= 8x |")
    print(f"| its top-1 drop vs fp32 distilled student | {pick.get('drop_pts', float('nan')):+.2f} pts | <= 0.5 |")


if __name__ == "__main__":
    main()
