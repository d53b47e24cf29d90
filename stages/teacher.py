"""teacher: train the teacher network (from scratch, or fine-tuned from ``teacher.weights``); write its
checkpoint, metrics and a training-curve PNG. With ``teacher.epochs: 0`` the given weights are used as they
are: the stage only evaluates them and writes the checkpoint the later stages read."""
from __future__ import annotations

from pathlib import Path

NAME = "teacher"
SECTIONS = ("seed", "device", "data", "teacher")
UPSTREAM = ()


def run(ctx) -> list[Path]:
    from pipeline import data, models
    from pipeline.report.plots import training_curves
    from pipeline.train.devices import seed_all
    from pipeline.train.engine import Classifier, fit

    cfg, tcfg = ctx.cfg, ctx.cfg.teacher
    models.check_arch(tcfg.arch)
    ds = data.load(cfg.data, cfg.seed)
    report = data.write_report(ds, ctx.dir)  # a photo folder's files ignored and images skipped
    seed_all(cfg.seed)
    model = models.create_from(tcfg.arch, ds.channels, len(ds.classes), tcfg.width, tcfg.weights,
                               log=lambda m: ctx.console.print(f"teacher: {m}", highlight=False, markup=False),
                               field="teacher.weights")
    if tcfg.epochs == 0:  # the config makes sure teacher.weights is set
        return _as_given(ctx, model, ds) + report
    result = fit(Classifier(model, tcfg.label_smoothing), model, ds, tcfg, ctx.dir, seed=cfg.seed,
                 fingerprint=ctx.fingerprint, console=ctx.console, augment=cfg.data.augment,
                 device_name=cfg.device, label="teacher")
    final = {**result.final, **result.test}
    ckpt = models.save_checkpoint(ctx.dir / "model.pt", model, tcfg.arch, tcfg.width, ds.meta(),
                                  test_top1=final["test_top1"], precision=result.precision)
    plot = training_curves({"teacher": result.history}, ctx.dir / "curves.png", f"teacher {tcfg.arch}",
                           cross_entropy=("teacher",) if tcfg.label_smoothing == 0 else ())
    ctx.metrics.update(test_top1=final["test_top1"], test_loss=final["test_loss"], val_top1=final.get("val_top1"),
                       epochs=len(result.history), bn_check=result.bn_check, precision=result.precision,
                       precision_probe=result.probe,
                       params=sum(p.numel() for p in model.parameters()),
                       images_per_s=sum(h["images_per_s"] for h in result.history) / len(result.history))
    return [ckpt, ctx.dir / "metrics.jsonl", plot] + report


def _as_given(ctx, model, ds) -> list[Path]:
    """Evaluate the given teacher on the test set and write it as this stage's checkpoint."""
    from pipeline import models
    from pipeline.errors import UserError
    from pipeline.train.devices import pick_device
    from pipeline.train.evaluate import accuracy, check_bn, predict
    from pipeline.train.precision import inference_precision

    tcfg = ctx.cfg.teacher
    fresh = [n for n, _ in model.named_parameters() if n not in model.loaded_params]
    if fresh:  # e.g. a classifier re-initialised for another class count: an untrained head is no teacher
        raise UserError(f"teacher.weights leave {len(fresh)} tensors untrained (e.g. {fresh[0]}), and "
                        "teacher.epochs is 0 (use the weights as given); set teacher.epochs to 1 or more to train them")
    device = pick_device(ctx.cfg.device)
    precision = inference_precision(tcfg.precision, device)
    held_out = {"device": device, "precision": precision,
                "channels_last": tcfg.channels_last}
    test = accuracy(predict(model.eval().to(device), ds.test_x, ds, batch_size=tcfg.eval_batch_size, **held_out),
                    ds.test_y)
    # weights used as given keep their own BatchNorm statistics; the check says whether they fit this data
    bn = check_bn(model, ds, tcfg.batch_size, ctx.cfg.seed, **held_out)
    ckpt = models.save_checkpoint(ctx.dir / "model.pt", model, tcfg.arch, tcfg.width, ds.meta(),
                                  test_top1=test["top1"], weights=tcfg.weights, precision=precision)
    ctx.metrics.update(test_top1=test["top1"], test_loss=test["loss"], epochs=0, weights=tcfg.weights, bn_check=bn,
                       params=sum(p.numel() for p in model.parameters()))
    ctx.console.print(f"teacher: {tcfg.arch} from {tcfg.weights} as given, test {test['top1']:.2%}", highlight=False,
                      markup=False)
    return [ckpt]
