"""A tiny trained student in a run directory, and a Context to call stage functions directly (the
distill stage is not needed: the checkpoint is written where it would write it)."""
from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console

from pipeline import config as config_mod
from pipeline import data, models
from pipeline.files import file_record
from pipeline.run.rundir import RunDir
from pipeline.run.runner import Context


def smoke_config(*overrides: str) -> config_mod.Config:
    return config_mod.load("smoke", ["data.synthetic_train=256", "data.synthetic_test=128",
                                     "quantize.calibration_images=64", "export.parity_images=64", *overrides])


def train_student(cfg: config_mod.Config, arch: str = "resnet8", width: float = 0.25, steps: int = 60):
    """A briefly trained model (real accuracy, so the accuracy gate means something)."""
    torch.manual_seed(0)
    ds = data.load(cfg.data, cfg.seed)
    model = models.create(arch, ds.channels, len(ds.classes), width)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(steps):
        idx = torch.randint(0, len(ds.train_y), (32,), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(model(ds.normalize(ds.train_x[idx])), ds.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), ds


def make_run(root: Path, cfg: config_mod.Config, arch: str = "resnet8", width: float = 0.25, steps: int = 60,
             model=None) -> RunDir:
    """A run directory holding distill/student.pt."""
    if model is None:
        model, ds = train_student(cfg, arch, width, steps)
    else:
        ds = data.load(cfg.data, cfg.seed)
    run = RunDir(root)
    run.create()
    models.save_checkpoint(run.stage_dir("distill") / "student.pt", model, arch, width, ds.meta())
    return run


def run_stage(run: RunDir, cfg: config_mod.Config, name: str) -> Context:
    """Run one stage module and record it in the manifest as the runner would."""
    import importlib

    mod = importlib.import_module(f"stages.{name}")
    ctx = Context(cfg, run, name, "test", Console(quiet=True))
    outputs = mod.run(ctx)
    run.record(name, {"fingerprint": "test", "outputs": [file_record(p, run.root) for p in outputs],
                      "metrics": ctx.metrics})
    ctx.outputs = outputs
    return ctx
