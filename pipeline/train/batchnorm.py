"""BatchNorm statistics that match the weights.

A BatchNorm layer trains on each batch's own statistics but evaluates with running averages updated at its
``momentum``. torchvision's MobileNetV3 and EfficientNet use momentum 0.01, so after a short training run the
averages still describe the early weights, and every eval-mode figure measures a different network than the one
trained. ``recalibrate`` recomputes them after training as PreciseBN does (detectron2, timm): a no-grad pass
over a fixed sample of training images, no augmentation, as a plain cumulative average (``momentum=None``).
torch's own ``torch.optim.swa_utils.update_bn`` does the same pass but puts the whole model in train mode
(dropout and stochastic depth then feed noise into the statistics) and takes no sample size, so the pass is
written here. ``check`` measures the symptom on any model: eval-mode against batch-statistics accuracy on
the same training images.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

STALE_POINTS = 5.0  # eval-mode this far below batch-statistics accuracy: the running statistics are not the weights'


def _trained_bns(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that training updates (in train mode, tracking statistics); a frozen teacher kept in
    eval mode inside a training task keeps its own."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]


def sample(n_train: int, n: int, seed: int) -> torch.Tensor:
    """Indices of ``n`` training images, the same for a seed on every rank and every resume."""
    return torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + 7919))[:n].sort().values


@torch.no_grad()
def recalibrate(model: nn.Module, images, forward, *, n: int, batch_size: int, seed: int,
                rank: int = 0, world: int = 1) -> int:
    """Recompute the running statistics of ``model``'s trained BatchNorm layers over ``n`` training images.

    ``model`` must be in the mode training leaves it in (so the layers that train are the ones in train mode);
    ``forward(uint8_batch)`` runs it on a batch of ``images`` rows. Under DDP each rank takes its share of the
    sample and the averages are all-reduced, so every rank ends with the same statistics as one process would.
    Returns the number of images used (0: nothing to do).
    """
    bns = _trained_bns(model)
    if not bns or n <= 0:
        return 0
    idx = sample(len(images), n, seed)
    per_rank = (len(idx) // world // batch_size) * batch_size or len(idx) // world
    if per_rank < 2:
        return 0
    idx = idx[rank * per_rank:(rank + 1) * per_rank]
    momenta = [m.momentum for m in bns]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    for i in range(0, len(idx), batch_size):
        batch = idx[i:i + batch_size]
        if len(batch) > 1:
            forward(images[batch])
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
        if world > 1:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf.div_(world)
    for m, mode in modes:
        m.training = mode
    return per_rank * world


@torch.no_grad()
def check(model: nn.Module, images, labels, forward, *, batch_size: int) -> dict:
    """Eval-mode top-1 against batch-statistics top-1 (the BatchNorm layers in train mode, as in training) on
    the same images. A gap of more than ``STALE_POINTS`` says the running statistics do not match the weights.
    A net without BatchNorm modules (plain, or the QAT fine-tune's exported graph) has nothing to check: {}."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return {}
    probe = copy.deepcopy(model).eval()
    correct = {"eval_top1": 0, "batch_top1": 0}
    n = 0
    for i in range(0, len(labels) - 1, batch_size):
        x, y = images[i:i + batch_size], labels[i:i + batch_size]
        if len(y) < 2:
            break
        probe.eval()
        correct["eval_top1"] += int((forward(probe, x).argmax(1).cpu() == y).sum())
        for m in probe.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
                m.momentum = 0.0  # use the batch's statistics without moving the running ones
        correct["batch_top1"] += int((forward(probe, x).argmax(1).cpu() == y).sum())
        n += len(y)
    if not n:
        return {}
    out = {k: v / n for k, v in correct.items()}
    out["images"] = n
    out["stale"] = 100 * (out["batch_top1"] - out["eval_top1"]) > STALE_POINTS
    return out


def stale_line(name: str, chk: dict | None) -> str | None:
    """One sentence for the report when ``name``'s statistics do not match its weights, else None."""
    if not chk or not chk.get("stale"):
        return None
    return (f"{name}: its BatchNorm statistics do not match its weights (eval mode {chk['eval_top1']:.2%} against "
            f"{chk['batch_top1']:.2%} with batch statistics on {chk['images']} training images), so its accuracy "
            "here understates the trained weights and no claim is made from it; raise bn_recalibration_images "
            "in its training section and rerun")
