"""One student trained with one method: what the distill stage and ``compress compare`` both run, so every
method gets the same student, epochs, schedule, data and seed."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from pipeline import data as data_mod
from pipeline import models
from pipeline.distill import methods as distillers
from pipeline.errors import UserError
from pipeline.train.devices import init_distributed, pick_device
from pipeline.train.engine import fit
from pipeline.train.evaluate import accuracy, predict


def new_student(cfg, ds: data_mod.Dataset, seed: int) -> models.StagedNet:
    """The student every method starts from: same architecture and, for a seed, the same initial weights
    (``student.weights`` where given, e.g. an ImageNet-pretrained MobileNet)."""
    models.check_arch(cfg.student.arch)
    torch.manual_seed(seed)
    return models.create_from(cfg.student.arch, ds.channels, len(ds.classes), cfg.student.width,
                              cfg.student.weights, log=lambda m: print(f"student: {m}"), field="student.weights")


def epochs_to(history: list[dict], target: float) -> int | None:
    """First epoch whose validation accuracy reaches ``target`` (None if none did, or there is no validation
    split)."""
    return next((h["epoch"] for h in history if h.get("val_top1", -1.0) >= target), None)


def train_student(cfg, method: str, seed: int, ds: data_mod.Dataset, teacher, adapted, out_dir: Path, *,
                  fingerprint: str, console, label: str) -> dict:
    """Train a fresh student with ``method``; returns the student and its figures.

    ``teacher`` is the original teacher, ``adapted`` the AdaptedTeacher from the adapt stage (only 'ama' uses
    it). Both are deep-copied, so one loaded teacher serves several runs.
    """
    side = distillers.needs(method)
    source = {"teacher": teacher, "adapted": adapted, None: None}[side]
    if side is not None and source is None:
        stage = "adapt" if side == "adapted" else "teacher"
        raise UserError(f"method '{method}' needs the {side} model; run 'compress {stage}' first")
    student = new_student(cfg, ds, seed)
    task = distillers.create(method, student, copy.deepcopy(source) if source is not None else None,
                             cfg.distill, list(cfg.adapt.stages), (ds.channels, ds.size),
                             label_smoothing=cfg.student.label_smoothing)
    device = pick_device(cfg.device, init_distributed())
    cache_s = task.setup(ds, device, augment=cfg.distill.augment, channels_last=cfg.student.channels_last,
                         teacher_precision=getattr(teacher, "trained_precision", "fp32"))
    out_dir.mkdir(parents=True, exist_ok=True)
    result = fit(task, student, ds, cfg.student, out_dir, seed=seed, fingerprint=fingerprint, console=console,
                 augment=cfg.distill.augment, device_name=cfg.device, label=label, section="student")
    hist = result.history
    # Every method's training loss differs (KD, hints), so the comparable figure is the student's plain
    # cross-entropy on the training set after training, the same measure for every method.
    train = accuracy(predict(student, ds.train_x, ds, batch_size=cfg.student.eval_batch_size, device=device,
                             precision=result.precision, channels_last=cfg.student.channels_last), ds.train_y)
    secs = [h["epoch_seconds"] for h in hist]
    return {"model": student.cpu(), "history": hist, "method": method, "seed": seed,
            "test_top1": result.test["test_top1"], "test_loss": result.test["test_loss"],
            "val_top1": hist[-1].get("val_top1"), "val_loss": hist[-1].get("val_loss"),
            "final_train_loss": train["loss"], "train_top1": train["top1"],
            "final_task_loss": hist[-1]["train_loss"],
            "seconds_per_epoch": sum(secs) / max(1, len(secs)), "cache_seconds": cache_s,
            "bn_check": result.bn_check, "precision": result.precision, "precision_probe": result.probe,
            "teacher_logits": task.cache.targets["logits"] if task.cache and task.original_soft_targets else None,
            "cache_hits": task.cache.hits if task.cache else 0,
            "cache_misses": task.cache.misses if task.cache else 0}


