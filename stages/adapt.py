"""adapt: train the activation-map adaptive module(s) inside the frozen teacher; write adapt/adapted.pt and
record the adapted teacher's accuracy beside the original's."""
from __future__ import annotations

import copy
from pathlib import Path

NAME = "adapt"
# of the student only what shapes the module: its training budget does not, so changing it keeps the module
SECTIONS = ("seed", "device", "data", "teacher", "student.arch", "student.width", "adapt")
UPSTREAM = ("teacher",)


def _subset(ds, n: int):
    """The first ``n`` training images, keeping the full set's normalisation (the teacher's)."""
    from pipeline.data import Dataset

    if not n or n >= len(ds.train_y):
        return ds
    sub = Dataset(ds.name, ds.train_x[:n], ds.train_y[:n], ds.test_x, ds.test_y, ds.classes, ds.val_x, ds.val_y)
    sub.mean, sub.std = ds.mean, ds.std
    return sub


def _train_config(cfg):
    """The module's training settings: the adapt section's budget on the teacher's net and precision, the
    rest at the training defaults."""
    import dataclasses

    a, t = cfg.adapt, cfg.teacher
    return dataclasses.replace(type(t)(), arch=t.arch, width=t.width, epochs=a.epochs, batch_size=a.batch_size,
                               lr=a.lr, schedule="onecycle", precision=t.precision, channels_last=t.channels_last,
                               eval_batch_size=t.eval_batch_size, bn_recalibration_images=a.bn_recalibration_images)


def run(ctx) -> list[Path]:
    import torch

    from pipeline import data, models
    from pipeline.distill import adaptive
    from pipeline.distill.adapter import AdaptTask
    from pipeline.distill.loading import load_teacher
    from pipeline.files import save_torch
    from pipeline.train.devices import init_distributed, pick_device
    from pipeline.train.engine import fit
    from pipeline.train.evaluate import evaluate

    cfg = ctx.cfg
    models.check_arch(cfg.student.arch)
    ds = data.load(cfg.data, cfg.seed)
    teacher = load_teacher(ctx.input("teacher", "model.pt"), cfg, ds)
    probe = models.create(cfg.student.arch, ds.channels, len(ds.classes), cfg.student.width)
    torch.manual_seed(cfg.seed)
    adapted = adaptive.build(copy.deepcopy(teacher), probe, cfg.adapt.stages, ds.channels, ds.size)
    task = AdaptTask(adapted, teacher, cfg.adapt)
    device = pick_device(cfg.device, init_distributed())
    tcfg = _train_config(cfg)
    train_ds = _subset(ds, cfg.adapt.train_subset)
    task.setup(train_ds, device, augment="none", channels_last=tcfg.channels_last,
               teacher_precision=teacher.trained_precision)
    result = fit(task, adapted, train_ds, tcfg, ctx.dir, seed=cfg.seed, fingerprint=ctx.fingerprint,
                 console=ctx.console, augment="none", device_name=cfg.device, label="adapt")
    held_out = {"batch_size": tcfg.eval_batch_size, "device": device, "precision": result.precision,
                "channels_last": tcfg.channels_last}
    original = {split: evaluate(teacher.to(device), ds, split, **held_out) for split in ("val", "test")}
    state = {**adapted.adapter_state(), "teacher_arch": cfg.teacher.arch, "student_arch": cfg.student.arch,
             "student_width": cfg.student.width}
    out = ctx.dir / "adapted.pt"
    save_torch(state, out)
    ctx.metrics.update(stages=adapted.stages, teacher_top1=original["test"]["test_top1"],
                       teacher_val_top1=original["val"].get("val_top1"),
                       adapted_teacher_top1=result.test["test_top1"], adapted_test_loss=result.test["test_loss"],
                       adapted_teacher_val_top1=result.final.get("val_top1"), adapted_bn_check=result.bn_check,
                       module_params=sum(p.numel() for p in adapted.adapters.parameters()),
                       precision=result.precision, precision_probe=result.probe)
    ctx.console.print(f"adapt: teacher {original['test']['test_top1']:.2%} -> adapted teacher "
                      f"{result.test['test_top1']:.2%} on test (stages {adapted.stages})")
    return [out, ctx.dir / "metrics.jsonl"]
