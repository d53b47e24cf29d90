"""Distillation losses as pure functions of tensors (no modules, no state), each tested against hand-computed
values in tests/test_losses.py. Every loss is computed in float32 whatever autocast hands in."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.errors import UserError

HINT_LOSSES = ("mse", "l1", "smooth_l1")  # distill.hint_loss reads these


def ce_loss(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy against the labels (smoothed by ``label_smoothing``, as torch defines it)."""
    return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)


def ce_kd(logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor, ce_weight: float, kd_weight: float,
          temperature: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton's objective: ``ce_weight`` x cross-entropy + ``kd_weight`` x the softened KL to the teacher."""
    return (ce_weight * ce_loss(logits, y, label_smoothing)
            + kd_weight * kd_loss(logits, teacher_logits, temperature))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): KL(teacher || student) of the softened distributions, times T^2 so its gradients
    keep the scale of the cross-entropy's whatever T is; averaged over the batch."""
    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * t * t


def hint_loss(student_map: torch.Tensor, target_map: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Distance between two activation maps of the same shape, averaged over every element."""
    if student_map.shape != target_map.shape:
        raise ValueError(f"hint maps differ in shape: {tuple(student_map.shape)} vs {tuple(target_map.shape)}")
    s, t = student_map.float(), target_map.float()
    if kind == "mse":
        return F.mse_loss(s, t)
    if kind == "l1":
        return F.l1_loss(s, t)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(s, t)
    raise UserError(f"unknown distill.hint_loss '{kind}'; use one of {', '.join(HINT_LOSSES)}")


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis (2017): channel mean of |a|^p, flattened and L2-normalised per image."""
    att = feature.float().abs().pow(p).mean(1).flatten(1)
    return F.normalize(att, dim=1)


def at_loss(student_att: torch.Tensor, teacher_att: torch.Tensor) -> torch.Tensor:
    """Attention transfer between two normalised attention maps (see ``attention_map``): the squared
    difference, averaged over positions and images."""
    if student_att.shape != teacher_att.shape:
        raise ValueError(f"attention maps differ in shape: {tuple(student_att.shape)} vs {tuple(teacher_att.shape)}")
    return (student_att.float() - teacher_att.float()).pow(2).mean()
