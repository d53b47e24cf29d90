"""The baseline: the student alone, trained on cross-entropy with the labels."""
from __future__ import annotations

from pipeline.distill import losses
from pipeline.distill.base import Distiller


class StudentAlone(Distiller):
    needs = None

    def loss(self, x, y, targets):
        logits = self.student(x)
        return losses.ce_loss(logits, y, self.label_smoothing), logits
