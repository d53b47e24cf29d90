"""Distillation methods, selected by name. One file per method on a shared base (base.py); the losses are
pure functions (losses.py)."""
from __future__ import annotations

import difflib

from pipeline.errors import UserError

# name -> (module, class, what it needs from the teacher side)
METHODS = {
    "student": ("student", "StudentAlone", None),
    "kd": ("kd", "HintonKD", "teacher"),
    "fitnets": ("fitnets", "FitNets", "teacher"),
    "at": ("at", "AttentionTransfer", "teacher"),
    "ama": ("ama", "ActivationMapAdaptation", "adapted"),
}


def check(name: str) -> None:
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=1, cutoff=0.4)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown distillation method '{name}'{hint}; valid methods: {', '.join(METHODS)}")


def needs(name: str) -> str | None:
    """'teacher', 'adapted' (the adapt stage's module) or None."""
    check(name)
    return METHODS[name][2]


def create(name: str, student, teacher, dcfg, stages, image: tuple[int, int]):
    """The training task for method ``name``; ``teacher`` is the adapted teacher for 'ama'; ``image`` is
    (channels, size) of the input, which the map-matching methods pair stages at."""
    import importlib

    check(name)
    module, cls, _ = METHODS[name]
    return getattr(importlib.import_module(f"pipeline.distillers.{module}"), cls)(student, teacher, dcfg, stages, image)
