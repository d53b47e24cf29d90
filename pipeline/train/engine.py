"""Training and evaluation: SGD with a one-cycle or cosine schedule, bf16 autocast + channels_last on CPUs
where a timed probe finds it faster (pipeline/train/probe.py), CUDA AMP on GPUs, per-epoch checkpoints that a
rerun resumes from (in the precision it started in), and DDP under torchrun.

A training *task* is any nn.Module whose ``forward(x, y)`` returns ``(loss, logits)``; ``Classifier`` is the
plain one, distillers are others. The engine does not care which.
"""
from __future__ import annotations

import dataclasses
import json
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from torch import nn

from pipeline import data as data_mod
from pipeline.data.batches import batches
from pipeline.errors import UserError
from pipeline.files import atomic_write, save_torch
from pipeline.train.devices import Dist, init_distributed, pick_device
from pipeline.train.evaluate import check_bn, evaluate, prepare, recalibrate_bn
from pipeline.train.optim import make_optimizer, param_groups
from pipeline.train.precision import autocast, channels_last_breaks, resolve_precision
from pipeline.train.probe import describe, probe

if typing.TYPE_CHECKING:
    from pipeline.config import TrainConfig


class Classifier(nn.Module):
    """Cross-entropy training of one model (optionally with label smoothing)."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing

    def forward(self, x, y):
        logits = self.model(x)
        return nn.functional.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits


@dataclass
class FitResult:
    history: list = field(default_factory=list)
    resumed_from: int = 0
    test: dict = field(default_factory=dict)  # test_top1 / test_loss of the final model, measured once
    bn_check: dict = field(default_factory=dict)  # batchnorm.check of the final model on training images
    precision: str = "fp32"  # what it trained in
    probe: dict = field(default_factory=dict)  # the precision probe's record (empty when precision was forced)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1%}  "
                               "{task.fields[ips]:.0f} img/s"),
                    TimeRemainingColumn(), console=console, transient=True)


@dataclass
class Trainer:
    """What every epoch of one ``fit`` shares: the task (and ``net``, its DDP wrapper under torchrun), the model
    inside it that is evaluated and saved, the optimizer state, the data and the settings."""
    task: nn.Module
    model: nn.Module
    net: nn.Module
    opt: torch.optim.Optimizer
    sched: object
    scaler: torch.amp.GradScaler
    ds: data_mod.Dataset
    cfg: TrainConfig
    device: torch.device
    precision: str
    seed: int
    d: Dist
    console: Console
    augment: str
    probe: dict

    @property
    def held_out(self) -> dict:
        """How evaluation runs: the eval batch size, the device, precision and memory format of training."""
        return {"batch_size": self.cfg.eval_batch_size, "device": self.device, "precision": self.precision,
                "channels_last": self.cfg.channels_last}


def _trainer(task, model, ds, cfg, *, seed, console, augment, device_name, label, section, distributed,
             resumed: dict | None) -> Trainer:
    """Place ``task`` on its device in its precision and memory format, and build its optimizer and schedule.
    ``resumed`` is the state a resumed training continues from: it keeps the precision it started in."""
    d = init_distributed() if distributed else Dist()
    device = pick_device(device_name, d)
    torch.manual_seed(seed)
    task.to(device)
    if cfg.channels_last and device.type == "cpu" and channels_last_breaks(task):
        cfg = dataclasses.replace(cfg, channels_last=False)
        if console and d.main:
            console.print(f"[yellow]{label}: channels_last off for this net: its 1x1 stride-2 convolutions with "
                          "under 16 input channels break oneDNN's NHWC backward (oneDNN issue #6035)[/yellow]")
    if cfg.channels_last:
        task.to(memory_format=torch.channels_last)
    steps_per_epoch = (len(ds.train_y) // d.world) // cfg.batch_size
    if steps_per_epoch < 1:
        raise UserError(f"batch size {cfg.batch_size} is larger than the training set; lower "
                        f"{section or label}.batch_size")
    trainable = param_groups(task, model, cfg.lr, getattr(cfg, "backbone_lr", 1.0))
    opt, sched = make_optimizer(trainable, cfg, steps_per_epoch * cfg.epochs)
    precision, record = _precision(task, ds, cfg, device, d, resumed)
    if console and d.main and record and not resumed:
        console.print(f"{label}: {describe(record)}", highlight=False)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")
    return Trainer(task, model, task, opt, sched, scaler, ds, cfg, device, precision, seed, d, console, augment,
                   record)


def _precision(task, ds, cfg, device, d: Dist, resumed: dict | None) -> tuple[str, dict]:
    """(precision, probe record): forced or GPU AMP as configured; else the one a resumed training started in
    (results stay those of an uninterrupted run); else the probe's, which rank 0 alone runs and every rank
    follows."""
    forced = resolve_precision(cfg.precision, device)
    if forced is not None:
        return forced, {}
    if resumed is not None and resumed.get("precision"):
        return resumed["precision"], resumed.get("precision_probe", {})
    record = None
    if d.main:
        n = min(cfg.batch_size, len(ds.train_y))
        x = prepare(ds.train_x[:n], ds, device, cfg.channels_last)
        y = ds.train_y[:n].to(device)
        backbone = getattr(cfg, "backbone_lr", 1.0)

        def make_opt(twin):  # the engine's own optimizer over the copy's trainable parameters
            return make_optimizer(param_groups(twin, twin, cfg.lr, backbone), cfg, 1000)[0]
        record = probe(task, make_opt, x, y, cfg.channels_last, d.world)
    if d.world > 1:
        box = [record]
        dist.broadcast_object_list(box, src=0)
        record = box[0]
    return record["choice"], record


def fit(task: nn.Module, model: nn.Module, ds: data_mod.Dataset, cfg: TrainConfig, out_dir: Path, *,
        seed: int, fingerprint: str, console: Console, augment: str = "none", device_name: str = "auto",
        label: str = "train", section: str | None = None, distributed: bool = True, on_epoch=None) -> FitResult:
    """Train ``task`` (loss module) and evaluate ``model`` (the net inside it) on the validation split after
    every epoch, its BatchNorm statistics recomputed first; the test split is evaluated once, on the final
    model (``FitResult.test``).

    Writes ``metrics.jsonl`` and ``last.pt`` (every epoch, for resume) into ``out_dir``; the model handed on is
    the last epoch's. A ``last.pt`` written for the same ``fingerprint`` is resumed; one for another is ignored.
    ``section``: the config section of ``cfg``, named in errors (default ``label``); ``distributed=False`` trains
    in this process alone under torchrun (a stage that rank 0 runs by itself).
    """
    state = _resume_state(out_dir / "last.pt", fingerprint, console)
    (out_dir / "best.pt").unlink(missing_ok=True)  # written by earlier versions, never read: not the model handed on
    t = _trainer(task, model, ds, cfg, seed=seed, console=console, augment=augment, device_name=device_name,
                 label=label, section=section, distributed=distributed, resumed=state)
    d, cfg = t.d, t.cfg
    result = FitResult(precision=t.precision, probe=t.probe)
    start = _resume(state, t, result, console if d.main else None, label)
    if d.world > 1:
        t.net = nn.parallel.DistributedDataParallel(task, device_ids=[t.device.index] if t.device.type == "cuda"
                                                    else None)
    for epoch in range(start, cfg.epochs):
        stats = _train_epoch(t, epoch, f"{label} {epoch + 1}/{cfg.epochs}")
        stats["bn_seconds"] = recalibrate_bn(model, ds, cfg, seed, d, **t.held_out)
        row = {"epoch": epoch + 1, **stats, **evaluate(model, ds, "val", **t.held_out),
               "lr": t.opt.param_groups[0]["lr"]}
        result.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if d.main:
            val = f"val {row['val_top1']:.2%}  " if "val_top1" in row else ""
            console.print(f"{label} epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f}  "
                          f"train {row['train_top1']:.2%}  {val}{row['images_per_s']:.0f} img/s")
            _save_state(t, out_dir, result, fingerprint, epoch)
    result.test = evaluate(model, ds, "test", **t.held_out)
    if d.main:
        result.bn_check = check_bn(model, ds, cfg.batch_size, seed, **t.held_out)
    if d.world > 1:
        dist.barrier()
    return result


def _train_epoch(t: Trainer, epoch: int, desc: str) -> dict:
    t.net.train()
    d, cfg = t.d, t.cfg
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    started = time.perf_counter()
    steps = (len(t.ds.train_y) // d.world) // cfg.batch_size
    with _progress(t.console) as bar:
        job = bar.add_task(desc, total=steps, loss=0.0, acc=0.0, ips=0.0, visible=d.main)
        for xb, yb, _ in batches(t.ds.train_x, t.ds.train_y, cfg.batch_size, shuffle=True, seed=t.seed,
                                 epoch=epoch, augment_mode=t.augment, rank=d.rank, world=d.world, drop_last=True):
            x = prepare(xb, t.ds, t.device, cfg.channels_last)
            y = yb.to(t.device, non_blocking=True)
            with autocast(t.device, t.precision):
                loss, logits = t.net(x, y)
            t.opt.zero_grad(set_to_none=True)
            t.scaler.scale(loss).backward()
            t.scaler.step(t.opt)
            t.scaler.update()
            t.sched.step()
            n = len(y)
            totals += torch.tensor([loss.item() * n, (logits.argmax(1) == y).sum().item(), n], dtype=torch.float64)
            elapsed = time.perf_counter() - started
            bar.update(job, advance=1, loss=totals[0].item() / totals[2].item(),
                       acc=totals[1].item() / totals[2].item(), ips=totals[2].item() * d.world / elapsed)
    if d.world > 1:
        dist.all_reduce(totals)
    elapsed = time.perf_counter() - started
    return {"train_loss": totals[0].item() / totals[2].item(), "train_top1": totals[1].item() / totals[2].item(),
            "images_per_s": totals[2].item() / elapsed, "epoch_seconds": elapsed}


def _save_state(t: Trainer, out_dir: Path, result: FitResult, fingerprint: str, epoch: int) -> None:
    state = {"fingerprint": fingerprint, "epoch": epoch, "task": t.task.state_dict(), "opt": t.opt.state_dict(),
             "sched": t.sched.state_dict(), "history": result.history, "precision": t.precision,
             "precision_probe": t.probe, "rng": torch.get_rng_state()}
    save_torch(state, out_dir / "last.pt")
    atomic_write(out_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in result.history))


def _resume_state(path: Path, fingerprint: str, console) -> dict | None:
    """The state in ``path`` if it was written for ``fingerprint`` (read before the trainer is built, since it
    fixes the precision), else None."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged last.pt only costs the progress it held
        if console and init_distributed().main:
            console.print(f"[yellow]{escape(str(path))} is unreadable; training starts over[/yellow]")
        return None
    return state if state.get("fingerprint") == fingerprint else None


def _resume(state: dict | None, t: Trainer, result: FitResult, console, label: str) -> int:
    if state is None:
        return 0
    t.task.load_state_dict(state["task"])
    t.opt.load_state_dict(state["opt"])
    t.sched.load_state_dict(state["sched"])
    torch.set_rng_state(state["rng"])
    result.history = list(state["history"])
    result.resumed_from = state["epoch"] + 1
    if console:
        console.print(f"{label}: resuming from epoch {result.resumed_from} in {t.precision}, the precision it "
                      "started in", highlight=False)
    return result.resumed_from
