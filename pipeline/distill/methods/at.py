"""Attention transfer (Zagoruyko & Komodakis, 2017): cross-entropy plus the distance between the student's
and the original teacher's normalised spatial attention maps at every teacher stage that has a student stage
of its resolution (adaptive.stage_pairs; attention maps ignore channels, so any width pairs)."""
from __future__ import annotations

from pipeline.distill import adaptive, losses
from pipeline.distill.base import Distiller


class AttentionTransfer(Distiller):
    needs = "teacher"

    def __init__(self, student, teacher, dcfg, stages, image):
        super().__init__(student, teacher, dcfg, stages)
        self.pairs = adaptive.stage_pairs(teacher, student, *image)  # teacher stage -> student stage

    def teacher_targets(self, x):
        _, maps = self.teacher.forward_maps(x)
        # only the attention maps are kept: a few hundred floats per image instead of whole feature maps
        return {f"att{i}": losses.attention_map(maps[i]) for i in self.pairs}

    def loss(self, x, y, targets):
        logits, maps = self.student.forward_maps(x)
        total = self.dcfg.ce_weight * losses.ce_loss(logits, y, self.label_smoothing)
        for i, j in self.pairs.items():
            total = total + self.dcfg.at_weight * losses.at_loss(losses.attention_map(maps[j]), targets[f"att{i}"])
        return total, logits
