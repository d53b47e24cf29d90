"""The scan of a user's photo folder: which files count, which split each belongs to, and one-line errors
when the folder makes no sound classifier (pipeline/data/imagefolder.py's docstring gives the rules)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision.datasets.folder import (
    IMG_EXTENSIONS,  # the files torchvision's ImageFolder accepts
)

from pipeline.errors import UserError

SPLITS = ("train", "val", "test")


@dataclass
class Scan:
    """What a folder holds: per split, (path, label) pairs; classes; files ignored."""
    classes: list[str]
    files: dict[str, list[tuple[str, int]]]
    ignored: dict[str, int] = field(default_factory=lambda: {"hidden": 0, "not an image": 0})
    root: str = ""  # the folder scanned, resolved


def _class_files(folder: Path, classes: list[str], ignored: dict) -> list[tuple[str, int]]:
    out = []
    for label, name in enumerate(classes):
        sub = folder / name
        if not sub.is_dir():
            continue
        for entry in sorted(os.scandir(sub), key=lambda e: e.name):
            if entry.name.startswith("."):
                ignored["hidden"] += 1
            elif not entry.is_file() or not entry.name.lower().endswith(IMG_EXTENSIONS):
                ignored["not an image"] += 1
            else:
                out.append((entry.path, label))
    return out


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_folders(root: Path) -> dict[str, Path]:
    """The train/, val/ and test/ folders of ``root`` (none: the flat layout), checked to make a layout."""
    names = {p.name for p in root.iterdir() if p.is_dir()}
    misnamed = sorted(n for n in names if n.lower() in SPLITS and n not in SPLITS)
    if misnamed and all(n.lower() in SPLITS for n in names):  # not a class named Train beside Bus and Car
        raise UserError(f"{', '.join(n + '/' for n in misnamed)} in {root} must be lower case; rename to "
                        f"{', '.join(n.lower() + '/' for n in misnamed)}")
    given = {s: root / s for s in SPLITS if s in names}
    if given and "train" not in given:
        raise UserError(f"{next(iter(given.values()))} needs a train/ folder beside it (one subfolder of images per "
                        f"class), or put the class folders at the top of {root}")
    if len(given) == 1:
        raise UserError(f"{given['train']} needs val/ or test/ beside it, or put the class folders at the top of "
                        f"{root} to have a test split held out of them")
    return given


def _check_images(folder: Path, classes: list[str], files: list[tuple[str, int]], split: str) -> None:
    """Every class has images in ``folder``: the folder of train/ or of the flat layout, or a val/ or test/."""
    if not files:
        raise UserError(f"{folder} has no images; put one subfolder of images per class in it")
    have = {y for _, y in files}
    for label, name in enumerate(classes):
        if label in have:
            continue
        if split == "train":
            raise UserError(f"class folder {folder / name} has no images; remove it or add images")
        raise UserError(f"{folder} has no images of class '{name}', which train/ has; add some to {folder / name} "
                        "(every split needs every class)")


def _hold_out(files: list[tuple[str, int]], classes: list[str], seed: int, split: str,
              fraction: float) -> tuple[list, list]:
    """(kept, held out as ``split``): a stratified, seeded ``fraction`` of every class; the kept part, and a
    test split, have every class."""
    from pipeline.data.arrays import split_off

    kept_at, held_at = split_off(torch.tensor([y for _, y in files]), fraction, seed)
    kept, held = [files[i] for i in kept_at], [files[i] for i in held_at]
    for name, part in (("train", kept), ("test", held)) if split == "test" else (("train", kept),):
        missing = sorted(set(range(len(classes))) - {y for _, y in part})
        if missing:
            n = sum(y == missing[0] for _, y in files)
            raise UserError(f"{n} images of class '{classes[missing[0]]}' are too few to hold out "
                            f"data.{split}_fraction={fraction} of them (the {name} split would get none); add images "
                            f"or change data.{split}_fraction")
    return kept, held


def scan(root: Path, test_fraction: float, val_fraction: float, seed: int) -> Scan:
    """The split of ``root`` into train / val / test file lists (see the module docstring)."""
    root = root.expanduser()
    if not root.is_dir():
        raise UserError(f"data.root '{root}' is not a folder; point it at a folder with one subfolder of images "
                        "per class (or train/ and val/ folders of those); for a demo folder run "
                        "'python benchmarks/make_photo_folder.py data/photos'")
    root = root.resolve()  # a symlink and its target are one folder: one decode cache entry, not two evicting
    given = _split_folders(root)
    top = given.get("train", root)
    result = Scan(_classes(top), {}, root=str(root))
    if len(result.classes) < 2:
        raise UserError(f"{top} has {len(result.classes)} class folder(s) {result.classes}; a classifier needs two "
                        "or more: put the images in one subfolder per class")
    for s, folder in (given or {"train": root}).items():
        extra = set(_classes(folder)) - set(result.classes)
        if extra:
            raise UserError(f"{folder} has classes {sorted(extra)} that {top} lacks; "
                            "give every split the same class folders")
        result.files[s] = _class_files(folder, result.classes, result.ignored)
        _check_images(folder, result.classes, result.files[s], s)
    if not given:
        result.files["train"], result.files["test"] = _hold_out(result.files["train"], result.classes, seed, "test",
                                                                test_fraction)
    elif "test" not in given:  # train + val: val/ is what the report measures
        result.files["test"] = result.files.pop("val")
    if "val" not in result.files:  # a validation split held out of train
        result.files["train"], result.files["val"] = _hold_out(result.files["train"], result.classes, seed + 1, "val",
                                                               val_fraction)
    order = torch.randperm(len(result.files["train"]), generator=torch.Generator().manual_seed(seed)).tolist()
    result.files["train"] = [result.files["train"][i] for i in order]  # so that any prefix has every class
    return result
