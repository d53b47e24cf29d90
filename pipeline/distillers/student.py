"""The baseline: the student alone, trained on cross-entropy with the labels."""
from __future__ import annotations

from pipeline.distillers import losses
from pipeline.distillers.base import Distiller


class StudentAlone(Distiller):
    def loss(self, x, y, targets):
        logits = self.student(x)
        return losses.ce_loss(logits, y), logits
