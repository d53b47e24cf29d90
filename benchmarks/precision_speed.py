"""Which precision trains faster on this CPU, and what ``precision: auto`` picks, in one run.

    .venv/bin/python benchmarks/precision_speed.py [--steps 30] [--threads 2] [--archs resnet8 resnet20 mobilenetv2]

Prints images/s of a bare training loop (batch 128, 28x28x1 Fashion-MNIST) in fp32 NCHW, fp32 channels_last and
bf16 autocast + channels_last for each net, the ratio bf16 / fp32 (both channels_last), and what ``auto``
resolves to for that net on this machine. The CPU's bf16 instructions are listed beside the model name.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine_throughput import bare_loop  # noqa: E402

from deploy.runner import cpu_name  # noqa: E402
from pipeline import (
    data,
    models,  # noqa: E402
)
from pipeline.config import DataConfig  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.train import precision


def cpu_line() -> str:
    bf16 = [name for name, probe in (("AVX-512 BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported"))
            if getattr(torch.cpu, probe, lambda: False)()]
    return f"{cpu_name()}, {torch.backends.cpu.get_cpu_capability()}, bf16 hardware: {', '.join(bf16) or 'none'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--archs", nargs="+", default=["resnet8", "resnet20", "mobilenetv2"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        for arch in args.archs:
            models.check_arch(arch)
        ds = data.load(DataConfig(dataset="fashion_mnist", download=False))
    except UserError as e:
        parser.exit(2, f"error: {e}\n")
    n = 128 * args.steps
    x, y = ds.normalize(ds.train_x[:n]), ds.train_y[:n]
    print(f"# Training images/s by precision, batch 128, 28x28x1, {args.threads} threads, {args.steps} steps")
    print(f"machine: {cpu_line()}; torch {torch.__version__}\n")
    print("| net | fp32 NCHW | fp32 channels_last | bf16 + channels_last | bf16 / fp32 | auto picks |")
    print("|---|---|---|---|---|---|")
    for arch in args.archs:
        fp32 = bare_loop(arch, x, y, 128, args.steps, "fp32", False)
        fp32_cl = bare_loop(arch, x, y, 128, args.steps, "fp32", True)
        bf16 = bare_loop(arch, x, y, 128, args.steps, "bf16", True)
        auto = precision.resolve_precision("auto", torch.device("cpu"), models.create(arch, 1, 10))
        print(f"| {arch} | {fp32:.0f} | {fp32_cl:.0f} | {bf16:.0f} | {bf16 / fp32_cl:.2f} | {auto} |", flush=True)


if __name__ == "__main__":
    main()
