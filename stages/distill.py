"""distill: train the student with the configured method (default: the activation-map adaptive module) and,
on the same budget, the student alone as a baseline; write both checkpoints, their metrics and curves."""
from __future__ import annotations

from pathlib import Path

NAME = "distill"
SECTIONS = ("seed", "device", "data", "teacher", "student", "adapt", "distill")
UPSTREAM = ("teacher", "adapt")


def _needs_adapt(cfg) -> bool:
    from pipeline.distill import methods as distillers

    return distillers.needs(cfg.distill.method) == "adapted"


def upstream(cfg) -> tuple[str, ...]:
    """The adapt stage's module matters only to methods that distill through it."""
    return UPSTREAM if _needs_adapt(cfg) else ("teacher",)


def sections(cfg) -> tuple[str, ...]:
    return SECTIONS if _needs_adapt(cfg) else tuple(s for s in SECTIONS if s != "adapt")


def _save(ctx, run: dict, name: str, cfg, ds) -> list[Path]:
    """The student's checkpoint and curve, and the original teacher's logits on the training set where the
    method cached them (the quantize stage's QAT fine-tune distils from them instead of running the teacher)."""
    from pipeline import models
    from pipeline.files import save_torch

    ckpt = models.save_checkpoint(ctx.dir / f"{name}.pt", run["model"], cfg.student.arch, cfg.student.width,
                                  ds.meta(), method=run["method"], test_top1=run["test_top1"])
    out = [ckpt, ctx.dir / name / "metrics.jsonl"]
    if name == "student" and run["teacher_logits"] is not None:
        # fp16: half the disk (a million images of 1000 classes would take 4 GB in fp32); on the default run the
        # softened targets (T=4) move by at most 0.0004 in probability
        out.append(save_torch(run["teacher_logits"].half(), ctx.dir / "teacher_logits.pt"))
    return out


def run(ctx) -> list[Path]:
    from pipeline import data
    from pipeline.distill import methods as distillers
    from pipeline.distill.loading import load_adapted_for, load_teacher
    from pipeline.distill.train import train_student
    from pipeline.report.plots import training_curves
    from pipeline.train.devices import init_distributed

    cfg, method = ctx.cfg, ctx.cfg.distill.method
    distillers.check(method)
    ds = data.load(cfg.data, cfg.seed)
    teacher = load_teacher(ctx.input("teacher", "model.pt"), cfg, ds)
    adapted = load_adapted_for(ctx.input("adapt", "adapted.pt"), cfg, teacher, ds) if _needs_adapt(cfg) else None
    common = {"console": ctx.console}
    runs = {"student": train_student(cfg, method, cfg.seed, ds, teacher, adapted, ctx.dir / "student",
                                     fingerprint=ctx.fingerprint, label=f"distill {method}", **common)}
    if cfg.distill.baseline and method != "student":
        runs["baseline"] = train_student(cfg, "student", cfg.seed, ds, teacher, None, ctx.dir / "baseline",
                                         fingerprint=ctx.fingerprint + ":baseline", label="baseline", **common)
    if not init_distributed().main:  # other ranks trained alongside; rank 0 writes the files
        return []
    outputs = [p for name, r in runs.items() for p in _save(ctx, r, name, cfg, ds)]
    names = {"student": "student alone" if method == "student" else f"{method} student", "baseline": "student alone"}
    outputs.append(training_curves({names[n]: r["history"] for n, r in runs.items()}, ctx.dir / "curves.png",
                                   f"{cfg.student.arch} student: {' vs '.join(names[n] for n in runs)}",
                                   cross_entropy=("student alone",) if cfg.student.label_smoothing == 0 else ()))
    _record(ctx, runs, method)
    return outputs


def _record(ctx, runs: dict, method: str) -> None:
    """The stage's metrics; the student alone's figures are None where none was trained beside the distilled one
    (distill.baseline: false), and with method `student` the one student is the student alone."""
    s = runs["student"]
    alone = runs.get("baseline", s if method == "student" else {})
    stages = ctx.run.manifest()["stages"]
    # adapt's figures only where this method distils through it: otherwise its entry is of an earlier teacher
    adapt = stages.get("adapt", {}).get("metrics", {}) if "adapt" in upstream(ctx.cfg) else {}
    teacher_top1 = stages.get("teacher", {}).get("metrics", {}).get("test_top1")
    ctx.metrics.update(method=method, test_top1=s["test_top1"], test_loss=s["test_loss"], val_top1=s["val_top1"],
                       baseline_val_top1=alone.get("val_top1"),
                       final_train_loss=s["final_train_loss"], baseline_top1=alone.get("test_top1"),
                       baseline_train_loss=alone.get("final_train_loss"), teacher_top1=teacher_top1,
                       adapted_teacher_top1=adapt.get("adapted_teacher_top1"),
                       seconds_per_epoch=s["seconds_per_epoch"],
                       baseline_seconds_per_epoch=alone.get("seconds_per_epoch"), cache_seconds=s["cache_seconds"],
                       gain_top1=s["test_top1"] - alone["test_top1"] if alone else None,
                       bn_check={n: r["bn_check"] for n, r in runs.items()},
                       precision={n: r["precision"] for n, r in runs.items()},
                       precision_probe={n: r["precision_probe"] for n, r in runs.items()})
    if method == "student":
        said = f"student alone {s['test_top1']:.2%}"
    elif not alone:
        said = f"{method} student {s['test_top1']:.2%} (no student alone beside it: distill.baseline is false)"
    else:
        said = f"{method} student {s['test_top1']:.2%}, student alone {alone['test_top1']:.2%}"
    ctx.console.print(f"distill: {said}", highlight=False)
