"""The teacher checkpoint and the adapted teacher as the adapt and distill stages load them, checked against
the configured nets and the data set."""
from __future__ import annotations

import copy
from pathlib import Path

from pipeline import data as data_mod
from pipeline import models
from pipeline.distill import adaptive
from pipeline.errors import UserError


def load_teacher(path: Path, cfg, ds: data_mod.Dataset) -> models.StagedNet:
    """The teacher checkpoint, checked against the configured teacher and the data set."""
    teacher, ckpt = models.load_model(path, expect_arch=cfg.teacher.arch)
    meta = ckpt.get("meta", {})
    if meta.get("channels") != ds.channels or len(meta.get("classes", [])) != len(ds.classes):
        raise UserError(f"{path} was trained on {meta.get('dataset')} ({meta.get('channels')} channels, "
                        f"{len(meta.get('classes', []))} classes), not on this config's {ds.name}; "
                        "rerun 'compress teacher --force teacher'")
    # its targets are computed in the precision it trained in (distill.base.Distiller.setup)
    teacher.trained_precision = ckpt.get("precision", "fp32")
    return teacher.eval()


def load_adapted_for(path: Path, cfg, teacher, ds: data_mod.Dataset) -> adaptive.AdaptedTeacher:
    probe = models.create(cfg.student.arch, ds.channels, len(ds.classes), cfg.student.width)
    return adaptive.load_adapted(path, copy.deepcopy(teacher), probe, ds.channels, ds.size)
