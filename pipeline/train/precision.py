"""Training precision and memory format: bf16 autocast + channels_last where the CPU computes bf16 in
hardware, AMP on GPUs, fp32 otherwise."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from pipeline.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # train sections' precision reads these


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
    has no depthwise convolutions (bf16 autocast halved MobileNetV3's training speed on an AMX Xeon), otherwise
    fp32."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; use {', '.join(PRECISIONS)}")
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
