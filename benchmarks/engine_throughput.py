"""Training throughput of the engine against bare PyTorch loops, in one run.

    .venv/bin/python benchmarks/engine_throughput.py [--arch resnet20] [--steps 60] [--threads 2] [--precision bf16]

Prints images/s for: a bare fp32 NCHW loop, a bare loop in the engine's precision + memory format, and the
engine's own training epoch (batch augmentation, progress bar, metrics included) with the same model, batch and
precision, then the two ratios the pipeline issue asks for.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from pipeline import data, models
from pipeline.config import DataConfig, TrainConfig
from pipeline.train import engine
from pipeline.train.precision import autocast


def bare_loop(arch: str, x: torch.Tensor, y: torch.Tensor, batch: int, steps: int, precision: str,
              channels_last: bool, width: float = 1.0) -> float:
    """Images/s of the plainest training loop: pre-normalised tensors, SGD, no data pipeline at all."""
    torch.manual_seed(0)
    model = models.create(arch, x.shape[1], 10, width)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    device = torch.device("cpu")
    model.train()

    def step(i):
        xb, yb = x[i * batch % len(x):][:batch], y[i * batch % len(y):][:batch]
        with autocast(device, precision):
            loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(5):  # warm-up: oneDNN picks its kernels on the first calls
        step(i)
    started = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * batch / (time.perf_counter() - started)


def engine_epoch(arch: str, ds: data.Dataset, batch: int, steps: int, precision: str, augment: str) -> float:
    """Images/s the engine reports for one epoch of ``steps`` batches (warm-up epoch first)."""
    cfg = TrainConfig(arch=arch, epochs=2, batch_size=batch, precision=precision, channels_last=True,
                      eval_batch_size=1000)
    sub = data.Dataset(ds.name, ds.train_x[:batch * steps], ds.train_y[:batch * steps], ds.test_x[:1000],
                       ds.test_y[:1000], ds.classes)
    torch.manual_seed(0)
    model = models.create(arch, ds.channels, len(ds.classes))
    with tempfile.TemporaryDirectory() as tmp:
        result = engine.fit(engine.Classifier(model), model, sub, cfg, Path(tmp), seed=0, fingerprint="bench",
                            console=Console(quiet=True), augment=augment, device_name="cpu")
    return result.history[-1]["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    # auto is a per-net probe now (pipeline/train/probe.py); precision_speed.py says which one it picks here
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ds = data.load(DataConfig(dataset="fashion_mnist", download=False))
    n = args.batch * args.steps
    x, y = ds.normalize(ds.train_x[:n]), ds.train_y[:n]
    precision = args.precision
    rows = [
        ("bare loop, fp32, NCHW", bare_loop(args.arch, x, y, args.batch, args.steps, "fp32", False)),
        (f"bare loop, {precision}, channels_last", bare_loop(args.arch, x, y, args.batch, args.steps, precision, True)),
        (f"engine, {precision}, channels_last, no augmentation", engine_epoch(args.arch, ds, args.batch, args.steps,
                                                                             precision, "none")),
        (f"engine, {precision}, channels_last, crop+flip", engine_epoch(args.arch, ds, args.batch, args.steps,
                                                                       precision, "crop_flip")),
    ]
    print(f"# Training throughput, {args.arch}, batch {args.batch}, 28x28x1 Fashion-MNIST, {args.threads} threads")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}\n")
    print("| loop | images/s |\n|---|---|")
    for name, ips in rows:
        print(f"| {name} | {ips:.0f} |")
    bare_fp32, bare_fast, eng_plain, eng_aug = (r[1] for r in rows)
    print(f"\nengine / bare loop, same precision (no augmentation): {eng_plain / bare_fast:.2f}")
    print(f"engine / bare loop, same precision (crop+flip):       {eng_aug / bare_fast:.2f}")
    print(f"engine ({precision}+channels_last, crop+flip) / bare fp32 NCHW: {eng_aug / bare_fp32:.2f}")


if __name__ == "__main__":
    main()
