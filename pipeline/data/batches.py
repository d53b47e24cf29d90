"""Training batches: a seeded shuffle per epoch, an equal shard per DDP rank, and augmentation on whole uint8
batches (pad and random crop, flip, or a random resized box)."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import UserError

AUGMENT = ("none", "crop", "crop_flip", "resized_crop_flip")  # data.augment and distill.augment read these


def augment(x: torch.Tensor, mode: str, g: torch.Generator) -> torch.Tensor:
    """On a whole uint8 batch at once: random crop (pad 2 for <=28 px, 4 above) or random resized crop (area
    25-100 %, aspect 3/4-4/3, as torchvision's RandomResizedCrop but with scale from 0.25 up: small photos
    lose too much below), then a horizontal flip for the *_flip modes."""
    if mode == "none":
        return x
    if mode not in AUGMENT:
        raise UserError(f"unknown data.augment '{mode}'; use {', '.join(AUGMENT)}")
    out = _resized_crop(x, g) if mode == "resized_crop_flip" else _pad_crop(x, g)
    if mode.endswith("_flip"):
        flip = torch.rand(len(x), generator=g) < 0.5
        out = torch.where(flip.view(-1, 1, 1, 1), out.flip(3), out)
    return out.contiguous()


def _pad_crop(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    pad = 2 if h <= 28 else 4
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=g)
    rows = (torch.arange(h).view(1, h, 1) + dy).expand(n, h, w)
    cols = (torch.arange(w).view(1, 1, w) + dx).expand(n, h, w)
    return padded[torch.arange(n).view(n, 1, 1), :, rows, cols].permute(0, 3, 1, 2)


def _resized_crop(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One random box per image, all resampled back to H x W by a single bilinear grid_sample."""
    n, _, h, w = x.shape
    area = torch.empty(n).uniform_(0.25, 1.0, generator=g)  # of the image
    ratio = torch.exp(torch.empty(n).uniform_(np.log(3 / 4), np.log(4 / 3), generator=g))
    sx = (area * ratio).sqrt().clamp(max=1.0)  # box width / image width
    sy = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - sx)  # box centre in [-1, 1] coordinates
    cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - sy)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sy, cy
    grid = torch.nn.functional.affine_grid(theta, [n, 1, h, w], align_corners=False)
    out = torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
            augment_mode: str = "none", rank: int = 0, world: int = 1, drop_last: bool = False):
    """Yield (uint8 images, labels, indices); with ``world`` > 1 each rank gets its own equal shard."""
    n = len(y)
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    if world > 1:
        per_rank = n // world
        order = order[rank * per_rank:(rank + 1) * per_rank]
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        xb = x[idx]
        if augment_mode != "none":
            xb = augment(xb, augment_mode, g)
        yield xb, y[idx], idx
