"""A user's photo folder (data.dataset: imagefolder): scanned once (photo_scan.py), decoded once (in parallel)
into an on-disk uint8 cache, then memory-mapped.

Layouts: ``root/<class>/*`` (a seeded, stratified test split of ``data.test_fraction`` is held out), or
``root/train/<class>/*`` with ``val/`` and/or ``test/`` beside it, used as given: ``train + val + test`` are
the three splits; ``train + val`` makes val/ the report's test split (choices then use a validation split held
out of train/, so nothing is chosen on the images reported); ``train + test`` likewise. A leading ``~`` in
``root`` is the home folder.

The scan stops with one line saying what to fix when the folder makes no sound classifier: fewer than two
classes, a class folder with no images, split folders not in lower case, val/ or test/ without train/ or
train/ alone, or a split that lacks a class. The last is an error, not a warning, in both layouts (val/ or
test/ without a class of train/; a class too small for the held-out test split to get one of its images): a
split without a class never measures it, so the report's or the choices' accuracy would silently leave it out,
and a warning is easy to miss in a long run's log. Only a held-out validation split may lack a small class.

Only files with the extensions torchvision's ImageFolder accepts count; hidden files and other files are
ignored and counted. An image PIL cannot decode (corrupt, truncated, empty) is skipped and listed in the data
report; above ``data.max_bad_fraction`` of the folder the load stops with one line naming the first few,
and so does a split none of whose images can be read.
Every image is turned upright by its EXIF orientation and becomes RGB (grayscale, palette, RGBA; 16-bit and
float pixels scaled to 8 bits), its shorter side is resized to ``data.image_size`` and the centre is cropped, by
resizing only the centre box of the source (pipeline/data/pixels.py, shared with ``compress predict``), so a
60000 x 1 image costs no more memory than the output (JPEG files are decoded at a reduced scale first when they
are much larger).

Why our own code rather than torchvision's ImageFolder + DataLoader: training here runs on whole uint8
batches in memory-mapped arrays (one decode for every stage and every run, no per-epoch JPEG decoding on two
cores), which a per-sample Dataset cannot give. The cache is ``<cache>/<key>/images.u8`` (N x 3 x S x S uint8,
stored in split order train | val | test so that each split is a view, never a copy in RAM) plus
``index.json``; the key hashes the file list, sizes, mtimes, image_size and the split settings. A new entry
replaces the entries of the same folder and image_size that were decoded from files since changed, added or
removed, so editing a folder does not pile up stale copies; entries for other sizes or split settings stay.
"""
from __future__ import annotations

import typing

from pipeline import data
from pipeline.data import Dataset

if typing.TYPE_CHECKING:
    from pipeline.config import DataConfig

import concurrent.futures as cf
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.data.photo_scan import SPLITS, Scan
from pipeline.data.pixels import fit
from pipeline.errors import UserError


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "compress" / "decoded"


def cache_key(sc: Scan, image_size: int) -> str:
    # version: bumped whenever the decode gives other pixels (2: EXIF orientation, 16-bit/float, centre-box resize)
    h = hashlib.sha256(json.dumps({"size": image_size, "classes": sc.classes, "version": 2}).encode())
    for split in SPLITS:
        for path, label in sc.files[split]:
            st = os.stat(path)
            h.update(f"{split}\0{path}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def cache_usage(cache_dir: Path) -> tuple[int, int]:
    """(decoded entries, bytes on disk) in the decode cache."""
    files = [f for f in cache_dir.glob("*/*") if ".tmp" not in f.parent.name and f.is_file()]
    return len({f.parent for f in files if f.name == "index.json"}), sum(f.stat().st_size for f in files)


def content(sc: Scan) -> str:
    """What the folder held, whatever the split: every image file with its size and mtime."""
    h = hashlib.sha256()
    for path in sorted(p for files in sc.files.values() for p, _ in files):
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _drop_stale(cache_dir: Path, index: dict, keep: str, log) -> None:
    """Remove the entries of the same folder and image size decoded from an earlier state of the folder."""
    freed = 0
    for other in cache_dir.glob("*/index.json"):
        with contextlib.suppress(OSError, ValueError):
            old = json.loads(other.read_text())
            if (other.parent.name != keep and ".tmp" not in other.parent.name and old.get("source") == index["source"]
                    and old.get("image_size") == index["image_size"] and old.get("content") != index["content"]):
                freed += sum(f.stat().st_size for f in other.parent.iterdir())
                shutil.rmtree(other.parent)
                other.parent.with_name(other.parent.name + ".lock").unlink(missing_ok=True)
    if freed:
        log(f"removed the decode of an earlier state of this folder from the cache ({freed / 2**20:.1f} MB)")


def _unwritable(folder: Path, exc: OSError) -> UserError:
    return UserError(f"cannot write the decode cache in {folder.parent} ({exc.strerror}); set data.cache_dir to a "
                     "writable folder with space for it")


def decode_one(path: str, size: int) -> np.ndarray | None:
    """RGB uint8 (size, size, 3) by pipeline/data/pixels.py's fit; None if PIL cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return fit(img, (size, size))
    except Exception:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError, ...)
        return None


def _decode_chunk(out_path: str, total: int, size: int, jobs: list[tuple[int, str]]) -> list[int]:
    """Decode ``jobs`` (position, path) straight into the memmap; returns the positions that failed."""
    out = np.memmap(out_path, np.uint8, "r+", shape=(total, 3, size, size))
    bad = []
    for pos, path in jobs:
        arr = decode_one(path, size)
        if arr is None:
            bad.append(pos)
        else:
            out[pos] = arr.transpose(2, 0, 1)
    out.flush()
    return bad


@contextlib.contextmanager
def _decoding(folder: Path, log):
    """Hold the lock of cache entry ``folder`` while it is decoded: every torchrun rank on a machine (or two runs
    of one folder) would otherwise decode it at once, each with all cores and its own temporary copy. flock is
    released by the kernel when its holder dies, so a killed decode never blocks the next one."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        fh = open(folder.with_name(folder.name + ".lock"), "a")
    except OSError as exc:
        raise _unwritable(folder, exc) from exc
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for another process that is decoding this folder")
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some network mounts): decode unguarded, as before
            pass
        yield


def decode(sc: Scan, size: int, cache_dir: Path, max_bad_fraction: float, log=print, workers: int | None = None):
    """(images memmap N x 3 x S x S in split order, labels, split lengths, index) from the cache, decoding
    the folder first if the cache has no entry for it."""
    folder = cache_dir / cache_key(sc, size)
    if not (folder / "index.json").is_file():
        with _decoding(folder, log):  # one process decodes a folder; the others (torchrun's ranks) then read it
            if not (folder / "index.json").is_file():
                tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
                try:
                    _build(sc, size, folder, tmp, max_bad_fraction, log, workers)
                finally:  # an error, Ctrl-C or SIGTERM midway leaves no half-written entry behind
                    shutil.rmtree(tmp, ignore_errors=True)
    index = json.loads((folder / "index.json").read_text())
    n = sum(index["lengths"].values())
    images = np.memmap(folder / "images.u8", np.uint8, "c", shape=(n, 3, size, size))
    labels = np.asarray(index["labels"], np.int64)
    return images, labels, index


def _build(sc: Scan, size: int, folder: Path, tmp: Path, max_bad_fraction: float, log, workers: int | None) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.data.arrays import channel_stats

    ordered = [(s, p, y) for s in SPLITS for p, y in sc.files[s]]
    total = len(ordered)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        np.memmap(tmp / "images.u8", np.uint8, "w+", shape=(total, 3, size, size)).flush()
    except OSError as exc:
        raise _unwritable(folder, exc) from exc
    workers = workers or min(os.cpu_count() or 1, 8)
    chunks = [[(i, ordered[i][1]) for i in range(start, min(start + 256, total))] for start in range(0, total, 256)]
    bad: list[int] = []
    started = time.perf_counter()
    with Progress(TextColumn("decoding {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), transient=True) as bar, \
            cf.ProcessPoolExecutor(workers) as pool:
        task = bar.add_task(f"{total} images", total=total, rate="")
        futures = {pool.submit(_decode_chunk, str(tmp / "images.u8"), total, size, c): len(c) for c in chunks}
        for fut in cf.as_completed(futures):
            bad += fut.result()
            bar.advance(task, futures[fut])
            done = bar.tasks[0].completed
            bar.update(task, rate=f"{done / (time.perf_counter() - started):.0f} images/s")
    seconds = time.perf_counter() - started
    if len(bad) > max_bad_fraction * total:
        paths = sorted(ordered[i][1] for i in bad)
        first = ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")
        raise UserError(f"{len(bad)} of {total} images cannot be decoded (more than data.max_bad_fraction "
                        f"{max_bad_fraction}): {first}; remove or fix them")
    for split in SPLITS:
        if sc.files[split] and sum(ordered[i][0] == split for i in bad) == len(sc.files[split]):
            raise UserError(f"no image of the {split} split can be read ({len(sc.files[split])} files, e.g. "
                            f"{sc.files[split][0][0]}); replace them with readable images")
    keep = np.setdiff1d(np.arange(total), np.asarray(bad, np.int64))
    if bad:  # compact the good images to the front, preserving split order
        images = np.memmap(tmp / "images.u8", np.uint8, "r+", shape=(total, 3, size, size))
        for new, old in enumerate(keep):
            if new != old:
                images[new] = images[old]
        images.flush()
        del images
        os.truncate(tmp / "images.u8", len(keep) * 3 * size * size)
    lengths = {s: sum(1 for i in keep if ordered[i][0] == s) for s in SPLITS}
    train = np.memmap(tmp / "images.u8", np.uint8, "c", shape=(min(lengths["train"], 20000), 3, size, size))
    index = {"classes": sc.classes, "lengths": lengths, "labels": [ordered[i][2] for i in keep],
             "stats": channel_stats(torch.from_numpy(train)),  # chunked: the map is never read in whole
             "skipped": sorted(ordered[i][1] for i in bad), "ignored": sc.ignored, "image_size": size,
             "source": sc.root, "content": content(sc),
             "decode_seconds": round(seconds, 2), "images_per_s": round(total / max(seconds, 1e-9), 1)}
    del train
    (tmp / "index.json").write_text(json.dumps(index))
    with contextlib.suppress(OSError):  # OSError: another process finished the same entry first
        tmp.rename(folder)
    _drop_stale(folder.parent, index, folder.name, log)
    log(f"decoded {total} images in {seconds:.1f} s ({index['images_per_s']:.0f} images/s, {workers} processes); "
        f"ignored {sc.ignored['hidden']} hidden and {sc.ignored['not an image']} non-image files, skipped {len(bad)} "
        "unreadable images (listed in the teacher stage's data_report.json)")


def load(cfg: DataConfig, seed: int) -> Dataset:
    """A photo folder through pipeline/data/imagefolder.py: every split a view of the memory-mapped decode cache."""
    from rich.console import Console

    from pipeline.data import imagefolder, photo_scan

    size = cfg.image_size or data.IMAGEFOLDER_SIZE
    sc = photo_scan.scan(Path(cfg.root), cfg.test_fraction, cfg.val_fraction, seed)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else imagefolder.default_cache_dir()
    console = Console(stderr=True)
    images, labels, index = imagefolder.decode(sc, size, cache, cfg.max_bad_fraction,
                                               log=lambda m: console.print(f"data: {m}", highlight=False,
                                                                             markup=False))
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    n = index["lengths"]
    a, b = n["train"], n["train"] + n["val"]
    report = {"root": str(cfg.root), "image_size": size, "images": n, "ignored": sc.ignored,
              "skipped": index["skipped"], "decode_images_per_s": index["images_per_s"]}
    return Dataset("imagefolder", x[:a], y[:a], x[b:], y[b:], index["classes"], x[a:b], y[a:b], report,
                   tuple(map(tuple, index["stats"])))
