"""The distillation methods, selected by name: one file per method, each a ``Distiller`` (pipeline/distill/base.py)
whose class says what it needs from the teacher side. A new method is one file and one line below."""
from __future__ import annotations

from pipeline.distill.methods.ama import ActivationMapAdaptation
from pipeline.distill.methods.at import AttentionTransfer
from pipeline.distill.methods.fitnets import FitNets
from pipeline.distill.methods.kd import HintonKD
from pipeline.distill.methods.student import StudentAlone
from pipeline.errors import unknown

METHODS = {"student": StudentAlone, "kd": HintonKD, "fitnets": FitNets, "at": AttentionTransfer,
           "ama": ActivationMapAdaptation}


def check(name: str) -> None:
    if name not in METHODS:
        raise unknown("distillation method", name, METHODS, cutoff=0.4, label="valid methods")


def needs(name: str) -> str | None:
    """'teacher', 'adapted' (the adapt stage's module) or None."""
    check(name)
    return METHODS[name].needs


def create(name: str, student, teacher, dcfg, stages, image: tuple[int, int], label_smoothing: float = 0.0):
    """The training task for method ``name``; ``teacher`` is the adapted teacher for 'ama'; ``image`` is
    (channels, size) of the input, which the map-matching methods pair stages at; ``label_smoothing`` smooths the
    student's cross-entropy with the labels (every method has that term)."""
    check(name)
    task = METHODS[name](student, teacher, dcfg, stages, image)
    task.label_smoothing = label_smoothing
    return task
