"""The adapt stage's training task: only the adaptive modules train, inside the otherwise frozen teacher, so
the adapted teacher still classifies well (cross-entropy, KL to the original teacher's logits) and hands the
teacher's later stages a map like the one its own stage made (feature term)."""
from __future__ import annotations

from pipeline.distill import losses
from pipeline.distill.base import Distiller


class AdaptTask(Distiller):
    """``student`` here is the AdaptedTeacher being trained; ``teacher`` is the original, frozen."""

    def __init__(self, adapted, teacher, acfg):
        super().__init__(adapted, teacher, acfg, adapted.stages)
        self.acfg = acfg

    def teacher_targets(self, x):
        logits, maps = self.teacher.forward_maps(x)
        return {"logits": logits, **{f"map{i}": maps[i] for i in self.stages}}

    def loss(self, x, y, targets):
        a = self.acfg
        projections: dict = {}
        logits, _ = self.student.forward_hints(x, projections)
        total = losses.ce_kd(logits, y, targets["logits"], a.ce_weight, a.kl_weight, a.temperature)
        for i in self.stages:
            total = total + a.feat_weight * losses.hint_loss(projections[i], targets[f"map{i}"], "mse")
        return total, logits
