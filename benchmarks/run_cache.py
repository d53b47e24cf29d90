"""What the run-cache and code-aware fingerprints cost and save, against the same work done without them.

    .venv/bin/python benchmarks/run_cache.py [--config smoke] [--set teacher.epochs=8] [--rounds 3]

In one fresh run folder: train the teacher with setting A, then with setting B (data.augment flipped), then A
again, which the run-cache restores. Prints the teacher's training seconds (the baseline), the seconds of the
restoring command, and their ratio; then a fully skipped `compress teacher` (every fingerprint recomputed from
the import graph) and the import-graph hashing alone, best of --rounds.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.runner import cpu_name  # noqa: E402


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="smoke")
    parser.add_argument("--set", action="append", default=["teacher.epochs=8"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="bench-run-cache-"))
    base = [sys.executable, "-m", "pipeline.cli", "-c", args.config, "-r", str(run)]
    for item in args.set:
        base += ["--set", item]
    try:
        timed([*base, "--set", "data.augment=none", "teacher"])
        trained = json.loads((run / "manifest.json").read_text())["stages"]["teacher"]["seconds"]
        timed([*base, "--set", "data.augment=crop_flip", "teacher"])
        restore = timed([*base, "--set", "data.augment=none", "teacher"])
        restored = "restored" in json.loads((run / "manifest.json").read_text())["stages"]["teacher"]
        skipped = min(timed([*base, "--set", "data.augment=none", "teacher"]) for _ in range(args.rounds))
        graph = subprocess.run([sys.executable, "-c", (
            "import time; t = time.perf_counter(); from pipeline import codegraph, runner\n"
            "[codegraph.code_hash('stages.' + s) for s in runner.ORDER]; print(time.perf_counter() - t)")],
            cwd=ROOT, check=True, capture_output=True, text=True).stdout
    finally:
        shutil.rmtree(run, ignore_errors=True)
    print(f"machine: {cpu_name()}, {platform.machine()}, Python {platform.python_version()}")
    print(f"config: {args.config} {' '.join(args.set)}")
    print("| what | seconds |\n|---|---|")
    print(f"| teacher trained (stage time, the baseline) | {trained:.2f} |")
    print(f"| `compress teacher` that restores it from the run-cache (whole command) | {restore:.2f} |")
    print(f"| ratio restore / train | {restore / trained:.3f} |")
    print(f"| `compress teacher` with nothing to do (whole command, best of {args.rounds}) | {skipped:.2f} |")
    print(f"| import-graph hashing of all 7 stages, cold | {float(graph):.3f} |")
    print(f"restored from the cache: {restored}")


if __name__ == "__main__":
    main()
