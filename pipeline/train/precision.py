"""Training precision and memory format: what a forced ``precision`` means, what ``auto`` means on a GPU (AMP),
and the autocast context; on a CPU ``auto`` is decided by a timed probe (pipeline/train/probe.py)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from pipeline.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # train sections' precision reads these


def channels_last_breaks(task: nn.Module) -> bool:
    """Whether training ``task`` in channels_last would hit oneDNN issue #6035: the weight gradient of a 1x1
    stride-2 convolution with fewer input channels than the kernel's block (8 with AVX2, 16 with AVX-512)
    writes past its workspace in NHWC, which crashes on one thread and gives wrong gradients or hangs on more.
    ResNets narrower than width 1 have such shortcuts (e.g. resnet8 at width 0.25: 4 and 8 channels)."""
    return any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.groups == 1
               and m.in_channels < 16 and m.weight.requires_grad for m in task.modules())


def resolve_precision(precision: str, device: torch.device) -> str | None:
    """The precision a config value stands for without measuring: a forced one as it is, ``auto`` on a GPU as
    AMP (bf16 where the GPU has it, else fp16: not probed, tensor cores make it the faster one). None for
    ``auto`` on a CPU, where only the probe can tell (flags do not predict the speed)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; use {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return None


def inference_precision(precision: str, device: torch.device) -> str:
    """The precision of a pass that trains nothing (a teacher used as given): ``auto`` is fp32 on a CPU, since
    there is no training step to probe and one evaluation pass costs little either way."""
    return resolve_precision(precision, device) or "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
