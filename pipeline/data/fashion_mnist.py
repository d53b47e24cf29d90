"""Fashion-MNIST from its four idx files: looked up in data.root (a torchvision root or a folder with the
files), then in Debian's dataset-fashion-mnist, else downloaded through torchvision."""
from __future__ import annotations

import gzip
import typing
from pathlib import Path

import numpy as np
import torch

from pipeline.data import DEFAULT_ROOT, Dataset, download
from pipeline.errors import UserError

if typing.TYPE_CHECKING:
    from pipeline.config import DataConfig

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


FASHION_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
                 "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
        magic = int.from_bytes(raw[:4], "big")
        ndim = magic & 0xFF
        if magic >> 8 != 0x08 or ndim not in (1, 3):
            raise ValueError("bad magic number")
        dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path} is corrupt ({exc}); delete it and fetch Fashion-MNIST again "
                        "(apt-get install dataset-fashion-mnist)") from exc


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_candidates(cfg: DataConfig) -> list[Path]:
    roots = [Path(cfg.root).expanduser()] if cfg.root else [DEFAULT_ROOT]
    folders = []
    for root in roots:
        folders += [root, root / "FashionMNIST" / "raw", root / "fashion-mnist"]
    return folders + [DEBIAN_FASHION]


def load(cfg: DataConfig, seed: int) -> Dataset:
    if cfg.root and not Path(cfg.root).expanduser().exists():
        raise UserError(f"data.root {cfg.root} does not exist; fix the path or leave data.root empty")
    folders = _fashion_candidates(cfg)
    for folder in folders:
        files = {k: _find_idx(folder, stem) for k, stem in FASHION_FILES.items()}
        if all(files.values()):
            break
    else:
        if not cfg.download:
            raise UserError(f"Fashion-MNIST not found in {', '.join(map(str, folders))}; "
                            "run 'apt-get install dataset-fashion-mnist' or set data.download=true")
        folder = download("FashionMNIST", Path(cfg.root or DEFAULT_ROOT).expanduser())
        files = {k: _find_idx(folder, stem) for k, stem in FASHION_FILES.items()}
    arrays = {k: _read_idx(p) for k, p in files.items()}
    if len(arrays["train_x"]) != len(arrays["train_y"]) or len(arrays["test_x"]) != len(arrays["test_y"]):
        raise UserError(f"Fashion-MNIST files in {folder} disagree in length; fetch them again")
    tensor = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    return Dataset("fashion_mnist", tensor["train_x"][:, None], tensor["train_y"].long(), tensor["test_x"][:, None],
                   tensor["test_y"].long(), FASHION_CLASSES)


