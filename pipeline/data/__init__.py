"""Data: every source becomes a ``Dataset`` of decoded uint8 tensors held in memory (a photo folder as views
of a memory-mapped decode cache), and training reads it through ``batches``, augmented as whole tensors.

One module per source, named as ``data.dataset`` names it (fashion_mnist, cifar10, imagefolder: a user's
photos, synthetic); arrays.py holds the array helpers they share, pixels.py the one image conversion that
training and ``compress predict`` have in common.

Every set also has a validation split for every choice made from measurements (best epoch, calibration,
recommended artifact): an ImageFolder's own val/ folder, otherwise ``data.val_fraction`` of each class's
training images, picked by a seeded shuffle and never trained on. The test split is for the report only.
"""
from __future__ import annotations

import importlib
import typing
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.data.arrays import channel_stats, resized, split_off
from pipeline.errors import UserError, unknown

if typing.TYPE_CHECKING:
    from pipeline.config import DataConfig

# data.dataset: each names the module of this package whose load(cfg, seed) reads it, imported only when chosen, so
# a stage's fingerprint holds the source its config names and no other (pipeline/run/runner.py)
DATASETS = ("fashion_mnist", "cifar10", "imagefolder", "synthetic")


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # uint8, N x C x H x W
    train_y: torch.Tensor  # int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    val_x: torch.Tensor | None = None  # None = no validation split (an empty one)
    val_y: torch.Tensor | None = None
    report: dict | None = None  # an ImageFolder's scan: files ignored, images skipped, decode speed
    stats: tuple | None = None  # (mean, std) when known already (a decode cache stores them)

    def __post_init__(self):
        if self.val_x is None:
            self.val_x = self.train_x[:0]
            self.val_y = self.train_y[:0]
        self.mean, self.std = self.stats or channel_stats(self.train_x[:20000])

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def size(self) -> int:
        return self.train_x.shape[2]

    def meta(self) -> dict:
        """What a deployed model needs to know about its input (goes into checkpoints and model files)."""
        return {"dataset": self.name, "classes": self.classes, "channels": self.channels, "size": self.size,
                "mean": list(self.mean), "std": list(self.std), "layout": "NCHW"}

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x.to(torch.float32, copy=True).div_(255).sub_(mean).div_(std)  # one float copy, then in place


def write_report(ds: Dataset, folder: Path) -> list[Path]:
    """``folder``/data_report.json for a photo folder (what was ignored, skipped, decoded how fast); [] otherwise."""
    from pipeline.files import atomic_json

    return [atomic_json(folder / "data_report.json", ds.report)] if ds.report else []


def check_dataset(name: str) -> None:
    if name not in DATASETS:
        raise unknown("data set", name, DATASETS)


def load(cfg: DataConfig, seed: int = 0) -> Dataset:
    check_dataset(cfg.dataset)
    ds = importlib.import_module(f"{__name__}.{cfg.dataset}").load(cfg, seed)
    if not len(ds.val_y):
        ds = with_validation(ds, cfg.val_fraction, seed)
    if cfg.image_size and cfg.dataset != "imagefolder":  # an ImageFolder is decoded at image_size already
        ds = Dataset(ds.name, resized(ds.train_x, cfg.image_size), ds.train_y, resized(ds.test_x, cfg.image_size),
                     ds.test_y, ds.classes, resized(ds.val_x, cfg.image_size), ds.val_y)
    if cfg.train_subset:
        ds = Dataset(ds.name, ds.train_x[:cfg.train_subset], ds.train_y[:cfg.train_subset], ds.test_x, ds.test_y,
                     ds.classes, ds.val_x, ds.val_y, ds.report)
    return ds


def with_validation(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """``ds`` with a stratified ``fraction`` of its training images moved into the validation split."""
    if fraction == 0:
        return ds
    kept, held = split_off(ds.train_y, fraction, seed)
    return Dataset(ds.name, ds.train_x[kept], ds.train_y[kept], ds.test_x, ds.test_y, ds.classes,
                   ds.train_x[held], ds.train_y[held])


DEFAULT_ROOT = Path("data")


def download(kind: str, root: Path) -> Path:
    import torchvision

    try:
        if kind == "FashionMNIST":
            torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
            return root / "FashionMNIST" / "raw"
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        return root
    except Exception as exc:  # network errors come in many types
        raise UserError(f"could not download {kind} into {root} ({exc.__class__.__name__}); "
                        f"put the files there by hand or set data.root") from exc


IMAGEFOLDER_SIZE = 224  # data.image_size 0 on a photo folder: the size torchvision's classifiers are trained at
