"""FitNets (Romero et al., 2015), trained jointly as in mdistiller: cross-entropy plus a hint loss between a
regressor on the student's map and the original teacher's map at the same stages. No teacher adaptation: the
student side carries the projection, and the teacher's features are what they are. ``adapt.stages`` names the
teacher stages hinted at; each pairs with the student stage of its resolution (adaptive.stage_pairs)."""
from __future__ import annotations

from torch import nn

from pipeline.distill import adaptive, losses
from pipeline.distill.base import Distiller
from pipeline.errors import UserError


class FitNets(Distiller):
    needs = "teacher"

    def __init__(self, student, teacher, dcfg, stages, image):
        super().__init__(student, teacher, dcfg, stages)
        pairs = adaptive.stage_pairs(teacher, student, *image)
        unmatched = [i for i in self.stages if i not in pairs]
        if unmatched:
            raise UserError(f"fitnets hints at the teacher stages in adapt.stages, and {unmatched} has no student "
                            f"stage of its resolution; use stages from {sorted(pairs)}")
        self.pairs = {i: pairs[i] for i in self.stages}  # teacher stage -> student stage
        s_ch, t_ch = student.stage_channels, teacher.stage_channels
        # 1x1 conv-BN-ReLU regressor: teacher maps are post-ReLU, so the regressed map is too
        self.regressors = nn.ModuleDict({str(i): nn.Sequential(nn.Conv2d(s_ch[j], t_ch[i], 1, bias=False),
                                                               nn.BatchNorm2d(t_ch[i]), nn.ReLU())
                                         for i, j in self.pairs.items()})

    def teacher_targets(self, x):
        _, maps = self.teacher.forward_maps(x)
        return {f"map{i}": maps[i] for i in self.pairs}

    def loss(self, x, y, targets):
        logits, maps = self.student.forward_maps(x)
        total = self.dcfg.ce_weight * losses.ce_loss(logits, y, self.label_smoothing)
        for i, j in self.pairs.items():
            total = total + self.dcfg.hint_weight * losses.hint_loss(
                self.regressors[str(i)](maps[j]), targets[f"map{i}"], self.dcfg.hint_loss)
        return total, logits
