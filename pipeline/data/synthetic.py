"""Procedurally generated gratings: a learnable data set made in milliseconds, what the tests and the smoke
config use."""
from __future__ import annotations

import typing

import torch

from pipeline.data import Dataset

if typing.TYPE_CHECKING:
    from pipeline.config import DataConfig


def synthetic_images(n: int, classes: int, size: int, channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class is an oriented grating at its own frequency, with random phase, shift and noise:
    learnable in a few epochs, not by a single pixel."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    angle = (y.float() / classes * torch.pi)[:, None, None]
    freq = (1.5 + (y % 3).float())[:, None, None] * 2 * torch.pi / size
    phase = torch.rand(n, 1, 1, generator=g) * 2 * torch.pi
    coords = torch.arange(size).float()
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    wave = torch.sin(freq * (xx * torch.cos(angle) + yy * torch.sin(angle)) + phase)
    img = wave[:, None].repeat(1, channels, 1, 1) * 0.6 + torch.randn(n, channels, size, size, generator=g) * 0.3
    return ((img.clamp(-1, 1) + 1) * 127.5).to(torch.uint8), y


def load(cfg: DataConfig, seed: int) -> Dataset:
    args = (cfg.synthetic_classes, cfg.synthetic_size, cfg.synthetic_channels)
    train_x, train_y = synthetic_images(cfg.synthetic_train, *args, seed=1000 + seed)
    test_x, test_y = synthetic_images(cfg.synthetic_test, *args, seed=2000 + seed)
    return Dataset("synthetic", train_x, train_y, test_x, test_y, [f"class{i}" for i in range(cfg.synthetic_classes)])
