"""Hinton et al. (2015): cross-entropy plus KL to the original teacher's softened logits."""
from __future__ import annotations

from pipeline.distill import losses
from pipeline.distill.base import Distiller


class HintonKD(Distiller):
    needs = "teacher"
    original_soft_targets = True

    def teacher_targets(self, x):
        return {"logits": self.teacher(x)}

    def loss(self, x, y, targets):
        d = self.dcfg
        logits = self.student(x)
        return losses.ce_kd(logits, y, targets["logits"], d.ce_weight, d.kd_weight, d.temperature,
                            self.label_smoothing), logits
