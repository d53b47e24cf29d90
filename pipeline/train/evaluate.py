"""Evaluation of a model on uint8 images: normalised batches in the training precision, logits, top-1, and
the BatchNorm recalibration and check that every evaluation of a trained model relies on (batchnorm.py)."""
from __future__ import annotations

import functools
import time
import typing

import torch
from torch import nn

from pipeline import data as data_mod
from pipeline.data.batches import batches
from pipeline.train import batchnorm
from pipeline.train.devices import Dist
from pipeline.train.precision import autocast

if typing.TYPE_CHECKING:
    from pipeline.config import TrainConfig


def prepare(x: torch.Tensor, ds: data_mod.Dataset, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = ds.normalize(x.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, ds: data_mod.Dataset, *, batch_size: int = 1000,
            device: torch.device = torch.device("cpu"), precision: str = "fp32",
            channels_last: bool = False) -> torch.Tensor:
    """Float32 logits for uint8 images ``x``, in order."""
    was_training = model.training
    model.eval()
    outs = []
    for xb, _, _ in batches(x, torch.zeros(len(x), dtype=torch.long), batch_size, shuffle=False):
        with autocast(device, precision):
            outs.append(model(prepare(xb, ds, device, channels_last)).float().cpu())
    model.train(was_training)
    return torch.cat(outs)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> dict:
    out = {"top1": (logits.argmax(1) == y).float().mean().item(),
           "loss": nn.functional.cross_entropy(logits, y).item()}
    if logits.shape[1] > 10:
        out["top5"] = (logits.topk(5, 1).indices == y[:, None]).any(1).float().mean().item()
    return out


def recalibrate_bn(model: nn.Module, ds: data_mod.Dataset, cfg: TrainConfig, seed: int, d: Dist, *,
                   device: torch.device, precision: str, channels_last: bool, **_) -> float:
    """Recompute ``model``'s BatchNorm statistics over ``cfg.bn_recalibration_images`` training images
    (pipeline/train/batchnorm.py), so what is evaluated and saved next is the network that trained. Returns seconds."""
    started = time.perf_counter()
    forward = functools.partial(_forward(ds, device, precision, channels_last), model)
    batchnorm.recalibrate(model, ds.train_x, forward, n=cfg.bn_recalibration_images, batch_size=cfg.batch_size,
                          seed=seed, rank=d.rank, world=d.world)
    return time.perf_counter() - started


def check_bn(model: nn.Module, ds: data_mod.Dataset, train_batch: int, seed: int, *, device: torch.device,
             precision: str, channels_last: bool, images: int = 1024, **_) -> dict:
    """batchnorm.check on up to ``images`` training images, in batches of ``train_batch`` (as in training)."""
    idx = batchnorm.sample(len(ds.train_y), min(images, len(ds.train_y)), seed + 1)
    forward = _forward(ds, device, precision, channels_last)
    return batchnorm.check(model, ds.train_x[idx], ds.train_y[idx], forward, batch_size=train_batch)


def _forward(ds: data_mod.Dataset, device: torch.device, precision: str, channels_last: bool):
    """``forward(net, uint8 batch)`` -> float32 logits, normalised and in the training precision."""

    def forward(net, xb):
        with autocast(device, precision):
            return net(prepare(xb, ds, device, channels_last)).float()

    return forward


def evaluate(model: nn.Module, ds: data_mod.Dataset, split: str, **predict_kw) -> dict:
    """``{split}_top1`` and ``{split}_loss`` of ``model`` on the ``val`` or ``test`` split ({} if it is empty)."""
    x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
    if not len(y):
        return {}
    acc = accuracy(predict(model, x, ds, **predict_kw), y)
    return {f"{split}_top1": acc["top1"], f"{split}_loss": acc["loss"]}
