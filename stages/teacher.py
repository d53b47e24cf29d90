"""teacher: train the teacher network; write its checkpoint, metrics and a training-curve PNG."""
from __future__ import annotations

from pathlib import Path

NAME = "teacher"
SECTIONS = ("seed", "device", "data", "teacher")
UPSTREAM = ()


def run(ctx) -> list[Path]:
    from pipeline import data, models
    from pipeline.engine import Classifier, fit, seed_all
    from pipeline.plots import training_curves

    cfg, tcfg = ctx.cfg, ctx.cfg.teacher
    models.check_arch(tcfg.arch)
    ds = data.load(cfg.data, cfg.seed)
    seed_all(cfg.seed)
    model = models.create(tcfg.arch, ds.channels, len(ds.classes), tcfg.width)
    result = fit(Classifier(model, tcfg.label_smoothing), model, ds, tcfg, ctx.dir, seed=cfg.seed,
                 fingerprint=ctx.fingerprint, console=ctx.console, augment=cfg.data.augment,
                 device_name=cfg.device, label="teacher")
    final = {**result.final, **result.test}
    ckpt = models.save_checkpoint(ctx.dir / "model.pt", model, tcfg.arch, tcfg.width, ds.meta(),
                                  test_top1=final["test_top1"])
    plot = training_curves({"teacher": result.history}, ctx.dir / "curves.png", f"teacher {tcfg.arch}")
    ctx.metrics.update(test_top1=final["test_top1"], test_loss=final["test_loss"], val_top1=final.get("val_top1"),
                       epochs=len(result.history),
                       params=sum(p.numel() for p in model.parameters()),
                       images_per_s=sum(h["images_per_s"] for h in result.history) / len(result.history))
    return [ckpt, ctx.dir / "metrics.jsonl", plot]
