"""Training speed on a machine where another process holds a core: all cores against only the free ones.

    .venv/bin/python benchmarks/busy_cores.py [--seconds 20] [--arch resnet20]

Times SGD steps of the teacher network (batch 128, 28 x 28 x 1, fp32) at every core and at all cores but one,
first on the idle machine, then beside a one-thread matmul loop that stands in for other work. Prints images/s and
the ratio. It backs the README's advice to set OMP_NUM_THREADS to the free cores on a busy machine: intra-op
threads wait on each other at every op, so one thread that loses its core slows all of them.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import models  # noqa: E402

BUSY = "import torch, time\nx = torch.randn(512, 512)\nwhile True: x @ x"


def speed(arch: str, threads: int, seconds: float) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = models.create(arch, 1, 10, 1.0).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        images += len(x)
    return images / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--arch", default="resnet20")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    if cores < 2:
        print("error: needs at least 2 cores (one to keep busy, one to train on)", file=sys.stderr)
        sys.exit(2)
    print(f"{cores} cores, torch {torch.__version__}, {args.arch}, batch 128, fp32")
    rows = []
    for load in ("idle", "one core busy"):
        busy = None
        if load != "idle":
            busy = subprocess.Popen([sys.executable, "-c", BUSY], env={**os.environ, "OMP_NUM_THREADS": "1"})
            time.sleep(2)
        try:
            fast = {n: speed(args.arch, n, args.seconds) for n in (cores, cores - 1)}
        finally:
            if busy:
                busy.kill()
        rows.append((load, fast[cores], fast[cores - 1]))
    print(f"| machine | {cores} threads img/s | {cores - 1} threads img/s | {cores - 1} / {cores} |")
    print("|---|---|---|---|")
    for load, a, b in rows:
        print(f"| {load} | {a:.0f} | {b:.0f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
