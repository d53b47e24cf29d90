"""Would torch.compile make the training stages faster on a CPU? Eager against torch.compile (inductor) on the same
training step, in one run.

    .venv/bin/python benchmarks/compile_speed.py [--archs resnet20,resnet8] [--precisions fp32,bf16] [--steps 60]

For every net and precision it trains ``steps`` SGD steps of batch 128 on 28 x 28 x 1 inputs in channels_last
(the default config's teacher and student), eager and compiled, each in a fresh process with an empty inductor
cache, and prints the first three steps' time (the compile, for the compiled one) and the steady images/s after
them. Run it on a quiet machine; prefix ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 to cap the kernels at AVX2.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def one(arch: str, precision: str, compiled: bool, steps: int) -> dict:
    """One measurement, in this process."""
    import torch

    from pipeline import models

    torch.manual_seed(0)
    net = models.create(arch, 1, 10, 1.0).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return loss

    fn = torch.compile(step) if compiled else step

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            fn(x, y)
            opt.step()
        return time.perf_counter() - start

    first = run(3)
    return {"first_3_steps_s": round(first, 2), "images_per_s": round(steps * 128 / run(steps), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="resnet20,resnet8")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        arch, precision, mode = args.child.split(":")
        print(json.dumps(one(arch, precision, mode == "compile", args.steps)))
        return 0
    from deploy.runner import cpu_name

    caps = os.environ.get("ATEN_CPU_CAPABILITY", "native")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, kernels: {caps}")
    for arch in args.archs.split(","):
        for precision in args.precisions.split(","):
            rows = {}
            for mode in ("eager", "compile"):
                with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
                    out = subprocess.run([sys.executable, __file__, "--child", f"{arch}:{precision}:{mode}",
                                          "--steps", str(args.steps)], capture_output=True, text=True, check=True,
                                         env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
                rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            e, c = rows["eager"], rows["compile"]
            print(f"{arch:<9} {precision}: eager {e['images_per_s']:7.1f} img/s, compiled {c['images_per_s']:7.1f} "
                  f"img/s ({c['images_per_s'] / e['images_per_s']:.2f}x) after {c['first_3_steps_s']:.1f} s "
                  f"compiling (eager's first 3 steps {e['first_3_steps_s']:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
