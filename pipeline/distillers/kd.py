"""Hinton et al. (2015): cross-entropy plus KL to the original teacher's softened logits."""
from __future__ import annotations

from pipeline.distillers import losses
from pipeline.distillers.base import Distiller


class HintonKD(Distiller):
    def teacher_targets(self, x):
        return {"logits": self.teacher(x)}

    def loss(self, x, y, targets):
        d = self.dcfg
        logits = self.student(x)
        total = d.ce_weight * losses.ce_loss(logits, y) + \
            d.kd_weight * losses.kd_loss(logits, targets["logits"], d.temperature)
        return total, logits
