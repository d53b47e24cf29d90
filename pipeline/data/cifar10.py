"""CIFAR-10 from its python pickle batches in data.root/cifar-10-batches-py, downloaded through torchvision if
missing."""
from __future__ import annotations

import pickle
import typing
from pathlib import Path

import numpy as np
import torch

from pipeline.data import DEFAULT_ROOT, Dataset, download
from pipeline.errors import UserError

if typing.TYPE_CHECKING:
    from pipeline.config import DataConfig


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise UserError(f"{path} is corrupt ({exc.__class__.__name__}); delete cifar-10-batches-py and "
                        "fetch CIFAR-10 again") from exc


def load(cfg: DataConfig, seed: int) -> Dataset:
    root = Path(cfg.root or DEFAULT_ROOT).expanduser()
    folder = root / "cifar-10-batches-py"
    if not (folder / "test_batch").is_file():
        if not cfg.download:
            raise UserError(f"CIFAR-10 not found in {folder}; set data.download=true or unpack "
                            "cifar-10-python.tar.gz into data.root")
        download("CIFAR10", root)

    def batches(names):
        parts = [_unpickle(folder / n) for n in names if (folder / n).is_file()]
        if not parts:
            raise UserError(f"no CIFAR-10 batches {names[0]}... in {folder}; fetch CIFAR-10 again")
        x = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32)
        y = np.concatenate([np.asarray(p[b"labels"]) for p in parts])
        return torch.from_numpy(x.astype(np.uint8)), torch.from_numpy(y).long()

    train_x, train_y = batches([f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = batches(["test_batch"])
    meta = folder / "batches.meta"
    classes = ([c.decode() for c in _unpickle(meta)[b"label_names"]] if meta.is_file()
               else [str(i) for i in range(10)])
    return Dataset("cifar10", train_x, train_y, test_x, test_y, classes)
