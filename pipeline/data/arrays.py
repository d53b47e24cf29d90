"""Array helpers on whole uint8 image tensors: per-channel statistics, resizing, a stratified split. A leaf: it
imports nothing of ours."""
from __future__ import annotations

import torch

from pipeline.errors import UserError


def channel_stats(x: torch.Tensor, chunk: int = 2000) -> tuple[tuple, tuple]:
    """Per-channel mean and std of uint8 images in [0, 1], a chunk at a time (x may be a memory map)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].double().div_(255)
        total += part.sum((0, 2, 3))
        squares += part.square().sum((0, 2, 3))
    count = max(1, len(x) * x.shape[2] * x.shape[3])
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(max(v, 1e-3), 4) for v in std.tolist())


def resized(x: torch.Tensor, size: int, chunk: int = 2000) -> torch.Tensor:
    """uint8 N x C x H x W with the shorter side resized to ``size`` (antialiased bilinear) and the centre cropped."""
    h, w = x.shape[2:]
    if (h, w) == (size, size):
        return x
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = torch.empty((len(x), x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(x), chunk):
        part = torch.nn.functional.interpolate(x[start:start + chunk].float(), size=(nh, nw), mode="bilinear",
                                               antialias=True, align_corners=False)
        out[start:start + chunk] = part[:, :, top:top + size, left:left + size].round_().clamp_(0, 255).to(torch.uint8)
    return out


def split_off(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held) index tensors, both in their original order: round(fraction x n) images of every class
    are held out, picked by a shuffle seeded with ``seed``."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"data.val_fraction must be in [0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(y), dtype=torch.bool)
    for c in torch.unique(y):
        idx = (y == c).nonzero().flatten()
        held[idx[torch.randperm(len(idx), generator=g)[:int(round(len(idx) * fraction))]]] = True
    return (~held).nonzero().flatten(), held.nonzero().flatten()
