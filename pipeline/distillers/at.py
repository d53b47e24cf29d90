"""Attention transfer (Zagoruyko & Komodakis, 2017): cross-entropy plus the distance between the student's
and the original teacher's normalised spatial attention maps at every stage."""
from __future__ import annotations

from pipeline.distillers import losses
from pipeline.distillers.base import Distiller


class AttentionTransfer(Distiller):
    def teacher_targets(self, x):
        _, maps = self.teacher.forward_maps(x)
        # only the attention maps are kept: a few hundred floats per image instead of whole feature maps
        return {f"att{i}": losses.attention_map(m) for i, m in enumerate(maps)}

    def loss(self, x, y, targets):
        logits, maps = self.student.forward_maps(x)
        total = self.dcfg.ce_weight * losses.ce_loss(logits, y)
        for i, m in enumerate(maps):
            total = total + self.dcfg.at_weight * losses.at_loss(losses.attention_map(m), targets[f"att{i}"])
        return total, logits
