"""Activation-map adaptation (our reading of Wu et al., 2020; docs/method.md): cross-entropy, KL to the
teacher's softened logits, and a hint loss between the student's map and the adaptive module's
student-shaped map at every adapted stage.

``distill.kd_target`` says whose logits the KL term follows: the ``adapted`` teacher's (the module's own
classifier, weaker than the original) or the ``original`` teacher's, keeping only the hints from the module.

With ``distill.joint`` the module keeps adapting while the student trains: it is trained on its own
cross-entropy through the rest of the frozen teacher, and the hint loss pulls module and student toward each
other, so the supervisory map drifts toward what the student can represent. Its targets then change every
step, so nothing is cached.

``distill.route_weight`` adds a second way for the module to supervise: the student's map, put in place of the
module's output, runs through the module's projection and the rest of the frozen teacher, and the logits that
come out are pulled (T^2 KL) toward the soft targets. The module speaks the student's shape, so the teacher's
own later layers can judge the student's map directly, where an MSE hint weighs every element alike. This is
our extension, not the paper's: the same idea as feeding student features to the teacher's classifier (Yang et
al., 2021, "softmax regression representation learning"). The rest of the teacher then runs forward and
backward every step (no gradients to its weights), so it costs more per epoch; the targets stay cacheable.
"""
from __future__ import annotations

import torch

from pipeline.distill import losses
from pipeline.distill.base import Distiller


class ActivationMapAdaptation(Distiller):
    needs = "adapted"

    def __init__(self, student, teacher, dcfg, stages, image):
        super().__init__(student, teacher, dcfg, teacher.stages)
        self.original_soft_targets = dcfg.kd_target == "original"
        if dcfg.joint:
            self.cacheable = False
            for p in teacher.adapters.parameters():
                p.requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.dcfg.joint:  # the adapters train with the student; the teacher around them stays frozen
            self.teacher.adapters.train(mode)
            self.teacher.teacher.eval()
        return self

    def teacher_targets(self, x):
        if self.dcfg.kd_target == "original":  # the frozen original inside the adapted teacher
            logits, hints = self.teacher.original_logits_and_hints(x)
        else:
            logits, hints = self.teacher.forward_hints(x)
        return {"logits": logits, **{f"hint{i}": h for i, h in hints.items()}}

    def forward(self, x, y):
        if not self.dcfg.joint:
            return super().forward(x, y)
        logits, hints = self.teacher.forward_hints(x)
        module_loss = losses.ce_loss(logits, y)
        soft = logits.detach()
        if self.dcfg.kd_target == "original":
            with torch.no_grad():
                soft = self.teacher.teacher(x)
        targets = {"logits": soft, **{f"hint{i}": h for i, h in hints.items()}}
        loss, student_logits = self.loss(x, y, targets)
        return loss + module_loss, student_logits

    def loss(self, x, y, targets):
        d = self.dcfg
        logits, maps = self.student.forward_maps(x)
        total = losses.ce_kd(logits, y, targets["logits"], d.ce_weight, d.kd_weight, d.temperature,
                             self.label_smoothing)
        for i, j in self.teacher.student_stages.items():  # teacher stage -> student stage of its resolution
            total = total + d.hint_weight * losses.hint_loss(maps[j], targets[f"hint{i}"], d.hint_loss)
            if d.route_weight:
                routed = self.teacher.route(i, maps[j])
                total = total + d.route_weight * losses.kd_loss(routed, targets["logits"], d.temperature)
        return total, logits
