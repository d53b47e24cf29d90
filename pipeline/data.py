"""Data sets held in memory as decoded uint8 tensors; batches are augmented as whole tensors.

Fashion-MNIST is found offline (a torchvision root or Debian's dataset-fashion-mnist files) before
anything is downloaded; CIFAR-10 is read from its own pickle batches; a user's images come through an
ImageFolder layout with a held-out split; ``synthetic`` is a procedurally generated, learnable set.

Every set also has a validation split for every choice made from measurements (best epoch, calibration,
recommended artifact): an ImageFolder's own val/ folder, otherwise ``data.val_fraction`` of each class's
training images, picked by a seeded shuffle and never trained on. The test split is for the report only.
"""
from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.config import DataConfig
from pipeline.errors import UserError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_ROOT = Path("data")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
FASHION_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
                 "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
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
    from pipeline.store import atomic_json

    return [atomic_json(folder / "data_report.json", ds.report)] if ds.report else []


def channel_stats(x: torch.Tensor, chunk: int = 2000) -> tuple[tuple, tuple]:
    """Per-channel mean and std of uint8 images in [0, 1], a chunk at a time (x may be a memory map)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].double().div_(255)
        total += part.sum((0, 2, 3))
        squares += part.square().sum((0, 2, 3))
    count = max(1, len(x) * x.shape[2] * x.shape[3])
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(max(v, 1e-3), 4) for v in std.tolist())


def resized(x: torch.Tensor, size: int, chunk: int = 2000) -> torch.Tensor:
    """uint8 N x C x H x W with the shorter side resized to ``size`` (antialiased bilinear) and the centre cropped."""
    h, w = x.shape[2:]
    if (h, w) == (size, size):
        return x
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = torch.empty((len(x), x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(x), chunk):
        part = torch.nn.functional.interpolate(x[start:start + chunk].float(), size=(nh, nw), mode="bilinear",
                                               antialias=True, align_corners=False)
        out[start:start + chunk] = part[:, :, top:top + size, left:left + size].round_().clamp_(0, 255).to(torch.uint8)
    return out


def check_dataset(name: str) -> None:
    if name not in DATASETS:
        import difflib
        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown data set '{name}'{hint}; valid: {', '.join(DATASETS)}")


def load(cfg: DataConfig, seed: int = 0) -> Dataset:
    check_dataset(cfg.dataset)
    ds = {"fashion_mnist": _fashion, "cifar10": _cifar10, "imagefolder": _imagefolder,
          "synthetic": _synthetic}[cfg.dataset](cfg, seed)
    if not len(ds.val_y):
        ds = with_validation(ds, cfg.val_fraction, seed)
    if cfg.image_size and cfg.dataset != "imagefolder":  # an ImageFolder is decoded at image_size already
        ds = Dataset(ds.name, resized(ds.train_x, cfg.image_size), ds.train_y, resized(ds.test_x, cfg.image_size),
                     ds.test_y, ds.classes, resized(ds.val_x, cfg.image_size), ds.val_y)
    if cfg.train_subset:
        ds = Dataset(ds.name, ds.train_x[:cfg.train_subset], ds.train_y[:cfg.train_subset], ds.test_x, ds.test_y,
                     ds.classes, ds.val_x, ds.val_y, ds.report)
    return ds


def split_off(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held) index tensors, both in their original order: round(fraction x n) images of every class
    are held out, picked by a shuffle seeded with ``seed``."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"data.val_fraction must be in [0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(y), dtype=torch.bool)
    for c in torch.unique(y):
        idx = (y == c).nonzero().flatten()
        held[idx[torch.randperm(len(idx), generator=g)[:int(round(len(idx) * fraction))]]] = True
    return (~held).nonzero().flatten(), held.nonzero().flatten()


def with_validation(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """``ds`` with a stratified ``fraction`` of its training images moved into the validation split."""
    if fraction == 0:
        return ds
    kept, held = split_off(ds.train_y, fraction, seed)
    return Dataset(ds.name, ds.train_x[kept], ds.train_y[kept], ds.test_x, ds.test_y, ds.classes,
                   ds.train_x[held], ds.train_y[held])


# --- Fashion-MNIST ---------------------------------------------------------------------------------

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


def _fashion(cfg: DataConfig, seed: int) -> Dataset:
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
        folder = _download("FashionMNIST", Path(cfg.root or DEFAULT_ROOT).expanduser())
        files = {k: _find_idx(folder, stem) for k, stem in FASHION_FILES.items()}
    arrays = {k: _read_idx(p) for k, p in files.items()}
    if len(arrays["train_x"]) != len(arrays["train_y"]) or len(arrays["test_x"]) != len(arrays["test_y"]):
        raise UserError(f"Fashion-MNIST files in {folder} disagree in length; fetch them again")
    tensor = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    return Dataset("fashion_mnist", tensor["train_x"][:, None], tensor["train_y"].long(), tensor["test_x"][:, None],
                   tensor["test_y"].long(), FASHION_CLASSES)


def _download(kind: str, root: Path) -> Path:
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


# --- CIFAR-10 --------------------------------------------------------------------------------------

def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise UserError(f"{path} is corrupt ({exc.__class__.__name__}); delete cifar-10-batches-py and "
                        "fetch CIFAR-10 again") from exc


def _cifar10(cfg: DataConfig, seed: int) -> Dataset:
    root = Path(cfg.root or DEFAULT_ROOT).expanduser()
    folder = root / "cifar-10-batches-py"
    if not (folder / "test_batch").is_file():
        if not cfg.download:
            raise UserError(f"CIFAR-10 not found in {folder}; set data.download=true or unpack "
                            "cifar-10-python.tar.gz into data.root")
        _download("CIFAR10", root)

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


# --- ImageFolder -----------------------------------------------------------------------------------

IMAGEFOLDER_SIZE = 224  # data.image_size 0 on a photo folder: the size torchvision's classifiers are trained at


def _imagefolder(cfg: DataConfig, seed: int) -> Dataset:
    """A photo folder through pipeline/imagefolder.py: every split a view of the memory-mapped decode cache."""
    from pipeline import imagefolder
    from rich.console import Console

    size = cfg.image_size or IMAGEFOLDER_SIZE
    sc = imagefolder.scan(Path(cfg.root), cfg.test_fraction, cfg.val_fraction, seed)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else imagefolder.default_cache_dir()
    console = Console(stderr=True)
    images, labels, index = imagefolder.decode(sc, size, cache, cfg.max_bad_fraction,
                                               log=lambda m: console.print(f"data: {m}", highlight=False))
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    n = index["lengths"]
    a, b = n["train"], n["train"] + n["val"]
    report = {"root": str(cfg.root), "image_size": size, "images": n, "ignored": sc.ignored,
              "skipped": index["skipped"], "decode_images_per_s": index["images_per_s"]}
    return Dataset("imagefolder", x[:a], y[:a], x[b:], y[b:], index["classes"], x[a:b], y[a:b], report,
                   tuple(map(tuple, index["stats"])))


# --- synthetic -------------------------------------------------------------------------------------

def synthetic_images(n: int, classes: int, size: int, channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class is an oriented grating at its own frequency, with random phase, shift and noise:
    learnable in a few epochs, not by a single pixel."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    angle = (y.float() / classes * torch.pi)[:, None, None]
    freq = (1.5 + (y % 3).float())[:, None, None] * 2 * torch.pi / size
    phase = torch.rand(n, 1, 1, generator=g) * 2 * torch.pi
    coords = torch.arange(size).float()
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    wave = torch.sin(freq * (xx * torch.cos(angle) + yy * torch.sin(angle)) + phase)
    img = wave[:, None].repeat(1, channels, 1, 1) * 0.6 + torch.randn(n, channels, size, size, generator=g) * 0.3
    return ((img.clamp(-1, 1) + 1) * 127.5).to(torch.uint8), y


def _synthetic(cfg: DataConfig, seed: int) -> Dataset:
    args = (cfg.synthetic_classes, cfg.synthetic_size, cfg.synthetic_channels)
    train_x, train_y = synthetic_images(cfg.synthetic_train, *args, seed=1000 + seed)
    test_x, test_y = synthetic_images(cfg.synthetic_test, *args, seed=2000 + seed)
    return Dataset("synthetic", train_x, train_y, test_x, test_y, [f"class{i}" for i in range(cfg.synthetic_classes)])


# --- batches ---------------------------------------------------------------------------------------

def augment(x: torch.Tensor, mode: str, g: torch.Generator) -> torch.Tensor:
    """On a whole uint8 batch at once: random crop (pad 2 for <=28 px, 4 above) or random resized crop (area
    25-100 %, aspect 3/4-4/3, as torchvision's RandomResizedCrop but with scale from 0.25 up: small photos
    lose too much below), then a horizontal flip for the *_flip modes."""
    if mode == "none":
        return x
    if mode not in ("crop", "crop_flip", "resized_crop_flip"):
        raise UserError(f"unknown data.augment '{mode}'; use none, crop, crop_flip or resized_crop_flip")
    out = _resized_crop(x, g) if mode == "resized_crop_flip" else _pad_crop(x, g)
    if mode.endswith("_flip"):
        flip = torch.rand(len(x), generator=g) < 0.5
        out = torch.where(flip.view(-1, 1, 1, 1), out.flip(3), out)
    return out.contiguous()


def _pad_crop(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    pad = 2 if h <= 28 else 4
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=g)
    rows = (torch.arange(h).view(1, h, 1) + dy).expand(n, h, w)
    cols = (torch.arange(w).view(1, 1, w) + dx).expand(n, h, w)
    return padded[torch.arange(n).view(n, 1, 1), :, rows, cols].permute(0, 3, 1, 2)


def _resized_crop(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One random box per image, all resampled back to H x W by a single bilinear grid_sample."""
    n, _, h, w = x.shape
    area = torch.empty(n).uniform_(0.25, 1.0, generator=g)  # of the image
    ratio = torch.exp(torch.empty(n).uniform_(np.log(3 / 4), np.log(4 / 3), generator=g))
    sx = (area * ratio).sqrt().clamp(max=1.0)  # box width / image width
    sy = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - sx)  # box centre in [-1, 1] coordinates
    cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - sy)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sy, cy
    grid = torch.nn.functional.affine_grid(theta, [n, 1, h, w], align_corners=False)
    out = torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
            augment_mode: str = "none", rank: int = 0, world: int = 1, drop_last: bool = False):
    """Yield (uint8 images, labels, indices); with ``world`` > 1 each rank gets its own equal shard."""
    n = len(y)
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    if world > 1:
        per_rank = n // world
        order = order[rank * per_rank:(rank + 1) * per_rank]
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        xb = x[idx]
        if augment_mode != "none":
            xb = augment(xb, augment_mode, g)
        yield xb, y[idx], idx
