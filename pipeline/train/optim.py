"""The optimizer and its schedule: SGD with a one-cycle or warm-up + cosine schedule, and a lower learning rate
for layers loaded from the user's weights."""
from __future__ import annotations

import math
import typing

import torch
from torch import nn

from pipeline.errors import UserError

SCHEDULES = ("onecycle", "cosine")  # train sections' schedule reads these

if typing.TYPE_CHECKING:
    from pipeline.config import TrainConfig


def param_groups(task: nn.Module, model: nn.Module, lr: float, backbone_lr: float) -> list[dict]:
    """The trainable parameters of ``task``: those ``model`` loaded from the user's weights
    (``model.loaded_params``, see models.create_from) at ``backbone_lr`` x ``lr``, fresh ones (a new
    classifier, distillation regressors) at ``lr``: fine-tuning must not wreck what was learnt."""
    loaded = getattr(model, "loaded_params", frozenset())
    old_ids = {id(p) for n, p in model.named_parameters() if n in loaded}
    params = [p for p in task.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in old_ids], "lr": lr},
              {"params": [p for p in params if id(p) in old_ids], "lr": lr * backbone_lr}]
    return [g for g in groups if g["params"]]


def make_optimizer(params, cfg: TrainConfig, steps: int):
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                    total_steps=steps,
                                                    pct_start=cfg.warmup_fraction, div_factor=10,
                                                    final_div_factor=100)
    elif cfg.schedule == "cosine":
        warm = max(1, int(steps * cfg.warmup_fraction))

        def factor(step):
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    else:
        raise UserError(f"unknown schedule '{cfg.schedule}'; use onecycle or cosine")
    return opt, sched
