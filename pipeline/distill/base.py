"""What every distillation method shares: a frozen teacher inside the training task, and a cache of the
teacher's outputs for the whole training set when nothing about an image changes between epochs.

The engine calls ``task(x, y)`` with normalised images only (no dataset indices), so the cache finds a batch's
rows by content: it undoes the normalisation to recover the exact uint8 pixels, looks their hash up in a sorted
table and checks the pixels match before trusting the hit; any miss just runs the teacher.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline import data as data_mod
from pipeline.data.batches import batches
from pipeline.train.evaluate import prepare
from pipeline.train.precision import autocast


def _freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def _pixel_hash(u8: torch.Tensor) -> torch.Tensor:
    """An int64 per image: pixels dotted with fixed pseudo-random weights below 2^20 (no overflow below
    ~34M pixels per image). Collisions are harmless: a hit is confirmed against the pixels."""
    flat = u8.reshape(len(u8), -1)
    weights = torch.randint(1, 1 << 20, (flat.shape[1],), generator=torch.Generator().manual_seed(1234))
    step = max(1, (1 << 26) // max(1, flat.shape[1]))  # int64 chunks of ~512 MB: a photo set never expands at once
    return torch.cat([(flat[i:i + step].long() * weights).sum(1) for i in range(0, len(flat), step)])


class TargetCache:
    """The teacher's outputs (a dict of tensors, first dim = training image) found by image content."""

    def __init__(self, images: torch.Tensor, mean, std, targets: dict[str, torch.Tensor]):
        self.images, self.targets = images, targets
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.keys, self.order = torch.sort(_pixel_hash(images))
        self.hits = self.misses = 0

    def lookup(self, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        u8 = ((x.detach().float().cpu() * self.std + self.mean) * 255).round_().clamp_(0, 255).to(torch.uint8)
        keys = _pixel_hash(u8)
        pos = torch.searchsorted(self.keys, keys).clamp_(max=len(self.keys) - 1)
        idx = self.order[pos]
        if not (bool((self.keys[pos] == keys).all()) and torch.equal(self.images[idx], u8)):
            self.misses += 1
            return None
        self.hits += 1
        return {k: v[idx].to(x.device, non_blocking=True) for k, v in self.targets.items()}


class Distiller(nn.Module):
    """A training task (``forward(x, y) -> (loss, logits)``) around a student and an optional frozen teacher.

    Subclasses give ``teacher_targets(x)`` (what the loss needs from the teacher, computed without gradients)
    and ``loss(x, y, targets)``. ``cacheable`` says whether those targets stay the same all training long.
    """

    cacheable = True
    needs: str | None = None  # what the method distills from: "teacher", "adapted" (the adapt stage's module) or None
    original_soft_targets = False  # whether the cached "logits" are the original teacher's (QAT reuses them)
    label_smoothing = 0.0  # of the student's cross-entropy with the labels (student.label_smoothing, set by create)

    def __init__(self, student: nn.Module, teacher: nn.Module | None, dcfg, stages: list[int], image=None):
        """``image`` (channels, size) is for the methods that pair stages by resolution (fitnets, at)."""
        super().__init__()
        self.student = student
        self.teacher = _freeze(teacher) if teacher is not None else None
        self.dcfg, self.stages = dcfg, list(stages)
        self.cache: TargetCache | None = None
        self.teacher_precision = "fp32"

    def train(self, mode: bool = True):
        """The engine puts the whole task in train mode every epoch; the teacher must stay in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def teacher_targets(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def loss(self, x: torch.Tensor, y: torch.Tensor, targets: dict) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _live_targets(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad(), autocast(x.device, self.teacher_precision):
            return self.teacher_targets(x)

    def forward(self, x, y):
        targets = self.cache.lookup(x) if self.cache is not None else None
        if targets is None and self.teacher is not None:
            targets = self._live_targets(x)
        return self.loss(x, y, targets or {})

    def setup(self, ds: data_mod.Dataset, device: torch.device, *, augment: str, channels_last: bool,
              batch_size: int = 500, teacher_precision: str = "fp32") -> float:
        """Set the teacher's precision (the one it trained in, where the teacher stage's probe found it the
        faster, or forced; fp32 for weights used as given) and, when the targets are fixed and no augmentation is
        random, compute them once for the whole training set. Returns the seconds spent caching."""
        import time

        self.teacher_precision = teacher_precision
        fixed = self.cacheable and getattr(self.dcfg, "cache", True)
        if self.teacher is None or not fixed or augment != "none":
            return 0.0
        started = time.perf_counter()
        self.teacher.to(device)
        if channels_last:
            self.teacher.to(memory_format=torch.channels_last)
        parts: dict[str, list] = {}
        for xb, _, _ in batches(ds.train_x, ds.train_y, batch_size, shuffle=False):
            for k, v in self._live_targets(prepare(xb, ds, device, channels_last)).items():
                # maps are kept in bf16 (half the memory; the loss upcasts), logits in fp32
                parts.setdefault(k, []).append(v.to("cpu", torch.bfloat16 if v.dim() > 2 else torch.float32))
        self.cache = TargetCache(ds.train_x, ds.mean, ds.std, {k: torch.cat(v) for k, v in parts.items()})
        return time.perf_counter() - started
