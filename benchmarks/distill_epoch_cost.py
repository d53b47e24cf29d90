"""Cost of a distillation epoch against a plain student epoch, every method measured in the same run.

    .venv/bin/python benchmarks/distill_epoch_cost.py [-c default] [--images 12800] [--threads 2] [--rounds 3]

Trains one epoch of each method on the first ``--images`` training images through the real engine
(pipeline.engine.fit: same batches, precision and memory format as `compress distill`) and prints
images/s, seconds per 60k-image epoch and the ratio to the student alone. The teacher is
runs/<config>/teacher/model.pt when it exists, else an untrained one of the configured architecture (the
cost does not depend on the weights). The one-off teacher cache is shown separately, as seconds per full
training set.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import platform
import tempfile
from pathlib import Path

import torch
from rich.console import Console

from pipeline import config, data, models
from pipeline.distill import adaptive
from pipeline.distill import methods as distillers
from pipeline.train.devices import pick_device
from pipeline.train.engine import fit


def _subset(ds, n):
    sub = data.Dataset(ds.name, ds.train_x[:n], ds.train_y[:n], ds.test_x[:1000], ds.test_y[:1000], ds.classes)
    sub.mean, sub.std = ds.mean, ds.std
    return sub


def measure(cfg, method: str, ds, teacher, joint: bool = False, cache: bool = True) -> dict:
    dcfg = dataclasses.replace(cfg.distill, joint=joint, cache=cache)
    torch.manual_seed(0)
    student = models.create(cfg.student.arch, ds.channels, len(ds.classes), cfg.student.width)
    source = None if method == "student" else copy.deepcopy(teacher)
    if method == "ama":
        source = adaptive.build(source, student, cfg.adapt.stages, ds.channels, ds.size)
    task = distillers.create(method, student, source, dcfg, list(cfg.adapt.stages), (ds.channels, ds.size),
                             label_smoothing=cfg.student.label_smoothing)
    cache_s = task.setup(ds, pick_device(cfg.device), augment=cfg.distill.augment,
                         channels_last=cfg.student.channels_last)
    scfg = dataclasses.replace(cfg.student, epochs=1)
    with tempfile.TemporaryDirectory() as tmp:
        hist = fit(task, student, ds, scfg, Path(tmp), seed=0, fingerprint="bench", console=Console(quiet=True),
                   augment=cfg.distill.augment, device_name=cfg.device, label=method).history
    return {"ips": hist[0]["images_per_s"], "cache_s": cache_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default="default")
    ap.add_argument("--images", type=int, default=12800)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best round counts (a "
                    "shared machine's load only ever slows a round down)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config.load(args.config)
    full = data.load(cfg.data, cfg.seed)
    ds = _subset(full, args.images)
    path = Path("runs") / args.config / "teacher" / "model.pt"
    if path.exists():
        teacher, _ = models.load_model(path, expect_arch=cfg.teacher.arch)
    else:
        teacher = models.create(cfg.teacher.arch, ds.channels, len(ds.classes), cfg.teacher.width)
    rows = [("student", {}), ("kd", {}), ("fitnets", {}), ("at", {}), ("ama", {}),
            ("ama", {"cache": False}), ("ama", {"joint": True})]
    best: dict[int, dict] = {}
    for _ in range(args.rounds):  # interleaved, so a burst of load elsewhere hits every method alike
        for i, (m, kw) in enumerate(rows):
            r = measure(cfg, m, ds, teacher.eval(), **kw)
            best[i] = max(best.get(i, r), r, key=lambda v: v["ips"])
    results = [(m, kw, best[i]) for i, (m, kw) in enumerate(rows)]
    base = results[0][2]["ips"]
    n = len(full.train_y)
    print(f"{cfg.student.arch} student, {cfg.teacher.arch} teacher, {cfg.data.dataset}, precision "
          f"{cfg.student.precision}, channels_last {cfg.student.channels_last}, {args.images} images, "
          f"{args.threads} threads, best of {args.rounds} interleaved rounds, {platform.machine()}")
    print("\n| method | teacher outputs | img/s | s / 60k epoch | epoch cost vs student | cache, s per full set |")
    print("|---|---|---|---|---|---|")
    for m, kw, r in results:
        how = "-" if m == "student" else ("live (module trains)" if kw.get("joint") else
                                          "live" if kw.get("cache") is False else "cached")
        cache = f"{r['cache_s'] * n / args.images:.1f}" if r["cache_s"] else "-"
        print(f"| {m} | {how} | {r['ips']:.0f} | {n / r['ips']:.1f} | {base / r['ips']:.2f}x | {cache} |")


if __name__ == "__main__":
    main()
