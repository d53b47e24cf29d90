"""Architecture registry. Every network, our own (cifar.py) or torchvision's (torchvision_nets.py), gives its
logits through ``forward`` and its stage-wise activation maps through ``forward_maps``, and exposes
``stem`` / ``stages`` / ``head`` so the adaptive module can replace one of its stages.

Select a net by name (``create``); an unknown name fails with the closest match and the valid names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pipeline.errors import UserError, unknown
from pipeline.models import torchvision_nets
from pipeline.models.cifar import (  # noqa: F401
    CIFAR_NETS,
    StagedNet,
    cifar_resnet,
    mobilenetv2,
    wide_resnet,
)

TORCHVISION_NETS: dict[str, Callable[..., nn.Module]] = {
    name: (lambda name: lambda c, k, width=1.0: torchvision_nets.create(name, c, k, width))(name)
    for name in torchvision_nets.TABLE}
REGISTRY: dict[str, Callable[..., nn.Module]] = {**CIFAR_NETS, **TORCHVISION_NETS}


def check_arch(name: str) -> None:
    if name not in REGISTRY:
        raise unknown("model", name, REGISTRY, cutoff=0.4, label="valid models")


def create(name: str, in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    check_arch(name)
    return REGISTRY[name](in_channels, num_classes, width=width)


def create_from(name: str, in_channels: int, num_classes: int, width: float = 1.0, weights: str = "",
                log=print, field: str = "weights") -> nn.Module:
    """``create``, then load the user's starting ``weights`` (a path or DEFAULT) if given. The model
    remembers which parameters came from the file (``loaded_params``) so training can give them a lower
    learning rate than the freshly initialised ones."""
    from pipeline.models.weights import load_into

    model = create(name, in_channels, num_classes, width)
    if weights:
        model.loaded_params = frozenset(load_into(model, weights, name, log, field))
    return model


def save_checkpoint(path: Path, model: nn.Module, arch: str, width: float, meta: dict, **extra) -> Path:
    """Weights plus everything needed to rebuild the model and its input pipeline, atomically."""
    from pipeline.files import save_torch

    payload = {"arch": arch, "width": width, "in_channels": meta["channels"], "num_classes": len(meta["classes"]),
               "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
               "meta": meta, **extra}
    return save_torch(payload, path)


def read_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; run the stage that writes it first")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged zip / pickle
        raise UserError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}); "
                        "delete it and rerun the stage that wrote it") from exc


def load_model(path: Path, expect_arch: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint describes; refuse one of another architecture than expected."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "arch" not in ckpt:
        raise UserError(f"{path} is not a compress checkpoint; point to a file written by compress")
    if expect_arch is not None and ckpt["arch"] != expect_arch:
        raise UserError(f"checkpoint {path} holds a {ckpt['arch']} but the config asks for {expect_arch}; "
                        "fix the config or rerun the stage with --force")
    model = create(ckpt["arch"], ckpt["in_channels"], ckpt["num_classes"], ckpt.get("width", 1.0))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path} does not fit a {ckpt['arch']} (width {ckpt.get('width')}); "
                        "it was written by another model; rerun its stage with --force") from exc
    return model, ckpt
