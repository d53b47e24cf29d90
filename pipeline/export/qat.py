"""Quantization-aware fine-tuning of the distilled student, with the teacher's soft targets.

The student is exported and prepared for QAT with the same PT2E quantizer and the same graph rewrites as the
TFLite int8 route (``litert_convert.qat_graph``), so the fake-quantized network trained here is the one the
converter turns into ``tflite_int8_qat``. It trains through the engine like every other stage (``fit``:
progress bar, per-epoch checkpoints a rerun resumes, validation each epoch) as a Hinton KD task against the
original teacher. Its soft targets are the ones the distill stage cached (``distill/teacher_logits.pt``, the
original teacher's logits on the training set), so the teacher does not run again; where that file is missing (a
method whose targets are the adapted teacher's, or a run from before the file existed) they are computed once.

``quantize.qat_epochs`` counts passes over the training set and may be a fraction: 0.25 trains one epoch on a
fixed random quarter of it (drawn from the seed); above 1 a fraction spreads over whole epochs of a subset (1.5 =
two epochs on 75%). A fake-quantized step costs about two plain ones, so a whole epoch of a 4-epoch student was
about 40% of its training; benchmarks/results/qat.md has what the length buys. The fine-tune has no test split:
the quantize stage tests the files made from it.

Two deliberate differences from the student's training: fp32 arithmetic (bf16 autocast would round below the
int8 steps the fake quantizers simulate) and a small cosine learning rate with no warm-up (a fine-tune, not a
schedule from scratch). It runs on the CPU (the quantizer's patterns are matched for CPU graphs; a fine-tune of a
small student is a minute or two).

Observers record ranges for the first ``OBSERVE_FRACTION`` of the steps and are then frozen, so the last
steps train against fixed scales, as the converted file will run. Batch norm is simulated folded by the
quantizer's conv-bn pattern and folded for real by ``convert_pt2e``.

The fine-tuned float weights and batch-norm statistics map back onto the student by name (export keeps the
module names), which gives ``onnx_int8_qat``: those weights through ONNX Runtime's static quantizer.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path

import torch
from torch import nn

OBSERVE_FRACTION = 0.5  # of the fine-tune's steps; then the quantization ranges are frozen


class QatNet(nn.Module):
    """The prepared PT2E graph behind the nn.Module interface the engine expects: ``train()``/``eval()`` move
    the exported graph between modes (batch norm, dropout), which plain calls on it refuse to do."""

    def __init__(self, graph: nn.Module, freeze_after: int):
        super().__init__()
        self.graph = graph
        self.freeze_after = freeze_after
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # saved, so a resume freezes on time

    def train(self, mode: bool = True):
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        self.training = mode
        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.graph)
        return self

    def forward(self, x):
        if self.training:
            self.steps += 1
            if int(self.steps) == self.freeze_after + 1:
                from torchao.quantization.pt2e import disable_observer

                self.graph.apply(disable_observer)
        return self.graph(x.contiguous())


def reason(qcfg, artifacts: dict) -> str | None:
    """Why the fine-tune runs (``quantize.qat`` on, or auto and a post-training int8 file failed its accuracy
    gate), or None. It serves the int8 files asked for (TFLite int8, ONNX x86), so without them it never runs."""
    if "int8" not in qcfg.tflite and "x86" not in qcfg.targets:
        return None
    if qcfg.qat == "on":
        return "quantize.qat is on"
    failed = [n for n, e in artifacts.items() if e.get("cause") == "accuracy_gate"]
    return f"{failed[0]} failed the accuracy gate" if qcfg.qat == "auto" and failed else None


def distilled_targets(path: Path) -> torch.Tensor | None:
    """The distill stage's cached teacher logits, or None where the file is missing or unreadable (the fine-tune
    then computes them: slower, same result)."""
    import pickle

    try:
        soft = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return None
    return soft if isinstance(soft, torch.Tensor) and soft.dim() == 2 else None


def schedule(qat_epochs: float, images: int, batch: int) -> tuple[int, int]:
    """(whole epochs, training images per epoch) that make ``qat_epochs`` passes over ``images``; at least one
    ``batch`` an epoch where the set holds one (a quarter of a small set can be less)."""
    epochs = max(1, math.ceil(qat_epochs - 1e-9))
    return epochs, min(images, max(batch, round(images * qat_epochs / epochs)))


def fine_tune(student: nn.Module, teacher: nn.Module, ds, cfg, qcfg, out_dir: Path, *, seed: int,
              fingerprint: str, console, soft_targets: torch.Tensor | None = None) -> tuple[QatNet, dict]:
    """Fine-tune ``student`` with fake quantization; returns the trained QatNet (eval mode) and its metrics.
    ``soft_targets``: the original teacher's logits for ``ds.train_x`` (the distill stage's), if at hand."""
    from pipeline.distill.base import TargetCache
    from pipeline.distill.methods.kd import HintonKD
    from pipeline.export.litert_convert import qat_graph
    from pipeline.train.engine import fit

    started = time.perf_counter()
    epochs, images = schedule(qcfg.qat_epochs, len(ds.train_y), cfg.student.batch_size)
    tcfg = dataclasses.replace(cfg.student, epochs=epochs, lr=qcfg.qat_lr, schedule="cosine",
                               warmup_fraction=0.0, precision="fp32", channels_last=False, weights="",
                               bn_recalibration_images=0)
    steps = (images // tcfg.batch_size) * tcfg.epochs
    graph, _ = qat_graph(student, (ds.channels, ds.size, ds.size))
    net = QatNet(graph, freeze_after=max(1, int(steps * OBSERVE_FRACTION)))  # ranges need one observed step
    task = HintonKD(net, teacher, cfg.distill, [])
    task.label_smoothing = cfg.student.label_smoothing  # the distill stage's loss, as there
    # a fixed subset (the same on a resume), or a view of the whole set rather than a copy of it; no test split:
    # the quantize stage tests the files made from this net
    keep = (torch.randperm(len(ds.train_y), generator=torch.Generator().manual_seed(seed))[:images].sort().values
            if images < len(ds.train_y) else slice(None))
    sub = dataclasses.replace(ds, train_x=ds.train_x[keep], train_y=ds.train_y[keep], test_x=ds.test_x[:0],
                              test_y=ds.test_y[:0], stats=(ds.mean, ds.std))
    cached = soft_targets is not None and len(soft_targets) == len(ds.train_x)
    if cached:
        task.cache = TargetCache(sub.train_x, ds.mean, ds.std, {"logits": soft_targets[keep].float()})
    cache_s = 0.0 if cached else task.setup(sub, torch.device("cpu"), augment="none", channels_last=False)
    result = fit(task, net, sub, tcfg, out_dir, seed=seed, fingerprint=fingerprint, console=console,
                 augment="none", device_name="cpu", label="qat", section="student", distributed=False)
    net.eval()
    metrics = {"epochs": qcfg.qat_epochs, "images_per_epoch": images, "lr": tcfg.lr,
               "soft_targets": "distill stage" if cached else "computed", "cache_seconds": round(cache_s, 2),
               "val_top1": result.final.get("val_top1"), "history": result.history,
               "seconds": round(sum(h["epoch_seconds"] for h in result.history), 2),
               "total_seconds": round(time.perf_counter() - started, 2)}
    return net, metrics


def float_student(student: nn.Module, net: QatNet) -> nn.Module:
    """A copy of ``student`` holding the fine-tuned weights and batch-norm statistics of ``net``."""
    trained = net.graph.state_dict()
    out = copy.deepcopy(student)
    state = out.state_dict()
    missing = [k for k in state if k not in trained and not k.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(f"the QAT graph lost {len(missing)} of the student's tensors, e.g. {missing[0]}")
    out.load_state_dict({k: trained.get(k, v) for k, v in state.items()})
    return out


@torch.no_grad()
def logits(net: QatNet, x, batch: int = 256) -> torch.Tensor:
    """The fake-quantized model's logits for normalised float NCHW images (the parity reference)."""
    import numpy as np

    net.eval()
    return torch.cat([net(torch.from_numpy(np.asarray(x[i:i + batch]))) for i in range(0, len(x), batch)])
