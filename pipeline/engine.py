"""Training and evaluation: SGD with a one-cycle or cosine schedule, bf16 autocast + channels_last on CPUs
that compute bf16 in hardware, CUDA AMP on GPUs, per-epoch checkpoints that a rerun resumes from, and DDP under
torchrun.

A training *task* is any nn.Module whose ``forward(x, y)`` returns ``(loss, logits)``; ``Classifier`` is the
plain one, distillers are others. The engine does not care which.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from pipeline import batchnorm, data as data_mod
from pipeline.config import TrainConfig
from pipeline.errors import UserError
from pipeline.store import atomic_write, save_torch


class Classifier(nn.Module):
    """Cross-entropy training of one model (optionally with label smoothing)."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing

    def forward(self, x, y):
        logits = self.model(x)
        return nn.functional.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits


# --- devices, precision, distributed -------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group torchrun set up (RANK / WORLD_SIZE / LOCAL_RANK); a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def seed_all(seed: int) -> None:
    """Seed every generator a run draws from; call it before building the model so init is repeatable."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str, d: Dist | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("device 'cuda' asked for but no GPU is visible; set device=cpu or device=auto")
        if d is not None and d.world > 1:
            return torch.device("cuda", d.local_rank)
    elif name != "cpu":
        raise UserError(f"unknown device '{name}'; use auto, cpu or cuda")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX-512 BF16 or AMX). oneDNN accepts bf16 on any
    AVX-512 CPU, but without these instructions it converts in software and trains slower than fp32
    (benchmarks/results/precision.md)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # a torch without these probes: do not guess
        return False


def has_depthwise(model: nn.Module | None) -> bool:
    """Whether ``model`` has grouped (depthwise) convolutions, as MobileNets and EfficientNets do."""
    return model is not None and any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())


def channels_last_breaks(task: nn.Module) -> bool:
    """Whether training ``task`` in channels_last would hit oneDNN issue #6035: the weight gradient of a 1x1
    stride-2 convolution with fewer input channels than the kernel's block (8 with AVX2, 16 with AVX-512)
    writes past its workspace in NHWC, which crashes on one thread and gives wrong gradients or hangs on more.
    ResNets narrower than width 1 have such shortcuts (e.g. resnet8 at width 0.25: 4 and 8 channels)."""
    return any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.groups == 1
               and m.in_channels < 16 and m.weight.requires_grad for m in task.modules())


def resolve_precision(precision: str, device: torch.device, model: nn.Module | None = None) -> str:
    """The precision ``auto`` stands for: AMP on GPUs; on CPUs bf16 only where the hardware has it and the net
    has no depthwise convolutions (bf16 autocast halved MobileNetV3's training speed on an AMX Xeon,
    ../shared/TOOLCHAIN.md), otherwise fp32."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"unknown precision '{precision}'; use auto, fp32, bf16 or fp16")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() and not has_depthwise(model) else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def prepare(x: torch.Tensor, ds: data_mod.Dataset, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = ds.normalize(x.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# --- evaluation ----------------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, ds: data_mod.Dataset, *, batch_size: int = 1000,
            device: torch.device = torch.device("cpu"), precision: str = "fp32",
            channels_last: bool = False) -> torch.Tensor:
    """Float32 logits for uint8 images ``x``, in order."""
    was_training = model.training
    model.eval()
    outs = []
    for xb, _, _ in data_mod.batches(x, torch.zeros(len(x), dtype=torch.long), batch_size, shuffle=False):
        with autocast(device, precision):
            outs.append(model(prepare(xb, ds, device, channels_last)).float().cpu())
    model.train(was_training)
    return torch.cat(outs)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> dict:
    out = {"top1": (logits.argmax(1) == y).float().mean().item(),
           "loss": nn.functional.cross_entropy(logits, y).item()}
    if logits.shape[1] > 10:
        out["top5"] = (logits.topk(5, 1).indices == y[:, None]).any(1).float().mean().item()
    return out


# --- training ------------------------------------------------------------------------------------------

def param_groups(task: nn.Module, model: nn.Module, lr: float, backbone_lr: float) -> list[dict]:
    """The trainable parameters of ``task``: those ``model`` loaded from the user's weights
    (``model.loaded_params``, see models.create_from) at ``backbone_lr`` x ``lr``, fresh ones (a new
    classifier, distillation regressors) at ``lr``: fine-tuning must not wreck what was learnt."""
    loaded = getattr(model, "loaded_params", frozenset())
    old_ids = {id(p) for n, p in model.named_parameters() if n in loaded}
    params = [p for p in task.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in old_ids], "lr": lr},
              {"params": [p for p in params if id(p) in old_ids], "lr": lr * backbone_lr}]
    return [g for g in groups if g["params"]]


def make_optimizer(params, cfg: TrainConfig, steps: int):
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                    total_steps=steps,
                                                    pct_start=cfg.warmup_fraction, div_factor=10,
                                                    final_div_factor=100)
    elif cfg.schedule == "cosine":
        warm = max(1, int(steps * cfg.warmup_fraction))

        def factor(step):
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    else:
        raise UserError(f"unknown schedule '{cfg.schedule}'; use onecycle or cosine")
    return opt, sched


@dataclass
class FitResult:
    history: list = field(default_factory=list)
    resumed_from: int = 0
    test: dict = field(default_factory=dict)  # test_top1 / test_loss of the final model, measured once
    bn_check: dict = field(default_factory=dict)  # batchnorm.check of the final model on training images

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1%}  {task.fields[ips]:.0f} img/s"),
                    TimeRemainingColumn(), console=console, transient=True)


def fit(task: nn.Module, model: nn.Module, ds: data_mod.Dataset, cfg: TrainConfig, out_dir: Path, *,
        seed: int, fingerprint: str, console: Console, augment: str = "none", device_name: str = "auto",
        label: str = "train", on_epoch=None) -> FitResult:
    """Train ``task`` (loss module) and evaluate ``model`` (the net inside it) on the validation split after
    every epoch; the test split is evaluated once, on the final model (``FitResult.test``).

    Writes ``metrics.jsonl``, ``last.pt`` (every epoch, for resume) and ``best.pt`` (best validation top-1)
    into ``out_dir``. A
    ``last.pt`` written for the same ``fingerprint`` is resumed; one for another is ignored.
    """
    d = init_distributed()
    device = pick_device(device_name, d)
    precision = resolve_precision(cfg.precision, device, model)
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
        raise UserError(f"batch size {cfg.batch_size} is larger than the training set; lower {label}.batch_size")
    trainable = param_groups(task, model, cfg.lr, getattr(cfg, "backbone_lr", 1.0))
    opt, sched = make_optimizer(trainable, cfg, steps_per_epoch * cfg.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")
    result = FitResult()
    start = _resume(out_dir / "last.pt", fingerprint, task, opt, sched, result, console if d.main else None)
    net = nn.parallel.DistributedDataParallel(task, device_ids=[device.index] if device.type == "cuda" else None) \
        if d.world > 1 else task
    best = max((h.get("val_top1", -1.0) for h in result.history), default=-1.0)
    held_out = {"batch_size": cfg.eval_batch_size, "device": device, "precision": precision,
                "channels_last": cfg.channels_last}
    for epoch in range(start, cfg.epochs):
        stats = _train_epoch(net, opt, sched, scaler, ds, cfg, device, precision, seed, epoch, d,
                             console, f"{label} {epoch + 1}/{cfg.epochs}", augment)
        stats["bn_seconds"] = recalibrate_bn(model, ds, cfg, seed, d, **held_out)
        row = {"epoch": epoch + 1, **stats, **evaluate(model, ds, "val", **held_out),
               "lr": opt.param_groups[0]["lr"]}
        result.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if d.main:
            val = f"val {row['val_top1']:.2%}  " if "val_top1" in row else ""
            console.print(f"{label} epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f}  "
                          f"train {row['train_top1']:.2%}  {val}{row['images_per_s']:.0f} img/s")
            _save_state(out_dir, task, opt, sched, result, fingerprint, epoch, precision)
            if row.get("val_top1", 1.0) > best:  # without a validation split, best.pt is the last epoch
                best = row.get("val_top1", -1.0)
                save_torch({k: v.cpu() for k, v in model.state_dict().items()}, out_dir / "best.pt")
    result.test = evaluate(model, ds, "test", **held_out)
    if d.main:
        result.bn_check = check_bn(model, ds, cfg.batch_size, seed, **held_out)
    if d.world > 1:
        dist.barrier()
    return result


def recalibrate_bn(model: nn.Module, ds: data_mod.Dataset, cfg: TrainConfig, seed: int, d: Dist, *,
                   device: torch.device, precision: str, channels_last: bool, **_) -> float:
    """Recompute ``model``'s BatchNorm statistics over ``cfg.bn_recalibration_images`` training images
    (pipeline/batchnorm.py), so what is evaluated and saved next is the network that trained. Returns seconds."""
    started = time.perf_counter()

    def forward(xb):
        with autocast(device, precision):
            model(prepare(xb, ds, device, channels_last))

    batchnorm.recalibrate(model, ds.train_x, forward, n=cfg.bn_recalibration_images, batch_size=cfg.batch_size,
                          seed=seed, rank=d.rank, world=d.world)
    return time.perf_counter() - started


def check_bn(model: nn.Module, ds: data_mod.Dataset, train_batch: int, seed: int, *, device: torch.device,
             precision: str, channels_last: bool, images: int = 1024, **_) -> dict:
    """batchnorm.check on up to ``images`` training images, in batches of ``train_batch`` (as in training)."""
    idx = batchnorm.sample(len(ds.train_y), min(images, len(ds.train_y)), seed + 1)

    def forward(net, xb):
        with autocast(device, precision):
            return net(prepare(xb, ds, device, channels_last)).float()

    return batchnorm.check(model, ds.train_x[idx], ds.train_y[idx], forward, batch_size=train_batch)


def evaluate(model: nn.Module, ds: data_mod.Dataset, split: str, **predict_kw) -> dict:
    """``{split}_top1`` and ``{split}_loss`` of ``model`` on the ``val`` or ``test`` split ({} if it is empty)."""
    x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
    if not len(y):
        return {}
    acc = accuracy(predict(model, x, ds, **predict_kw), y)
    return {f"{split}_top1": acc["top1"], f"{split}_loss": acc["loss"]}


def _train_epoch(net, opt, sched, scaler, ds, cfg, device, precision, seed, epoch, d, console, desc, augment) -> dict:
    net.train()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    started = time.perf_counter()
    steps = (len(ds.train_y) // d.world) // cfg.batch_size
    with _progress(console) as bar:
        job = bar.add_task(desc, total=steps, loss=0.0, acc=0.0, ips=0.0, visible=d.main)
        for xb, yb, _ in data_mod.batches(ds.train_x, ds.train_y, cfg.batch_size, shuffle=True, seed=seed,
                                          epoch=epoch, augment_mode=augment, rank=d.rank,
                                          world=d.world, drop_last=True):
            x = prepare(xb, ds, device, cfg.channels_last)
            y = yb.to(device, non_blocking=True)
            with autocast(device, precision):
                loss, logits = net(x, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
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


def _save_state(out_dir, task, opt, sched, result, fingerprint, epoch, precision):
    state = {"fingerprint": fingerprint, "epoch": epoch, "task": task.state_dict(), "opt": opt.state_dict(),
             "sched": sched.state_dict(), "history": result.history, "precision": precision,
             "rng": torch.get_rng_state()}
    save_torch(state, out_dir / "last.pt")
    atomic_write(out_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in result.history))


def _resume(path: Path, fingerprint: str, task, opt, sched, result: FitResult, console) -> int:
    if not path.exists():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged last.pt only costs the progress it held
        if console:
            console.print(f"[yellow]{path} is unreadable; training starts over[/yellow]")
        return 0
    if state.get("fingerprint") != fingerprint:
        return 0
    task.load_state_dict(state["task"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    torch.set_rng_state(state["rng"])
    result.history = list(state["history"])
    result.resumed_from = state["epoch"] + 1
    if console:
        console.print(f"resuming from epoch {result.resumed_from} ({path})")
    return result.resumed_from
