"""Bookkeeping every export/conversion shares: one wrapper that times it and logs path and size, the
manifest entry (``metrics["artifacts"][name]``), and the normalised image arrays the checks feed."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
from rich.markup import escape

from pipeline.errors import UserError
from pipeline.export import formats


class GateFailed(UserError):
    """An artifact converted fine but lost too much accuracy: recorded as failed, not a bad input."""


def path_of(ctx, name: str) -> Path:
    """Where artifact ``name`` lives in this stage's folder (from the format table)."""
    fmt = formats.get(name)
    if fmt.stage != ctx.name:
        raise UserError(f"format '{name}' belongs to stage '{fmt.stage}', not '{ctx.name}'")
    return ctx.dir / fmt.filename()


def upstream(ctx, name: str) -> Path:
    """An artifact written by an earlier stage, looked up by format name; refuses one marked failed."""
    fmt = formats.get(name)
    entry = ctx.run.manifest()["stages"].get(fmt.stage, {}).get("metrics", {}).get("artifacts", {}).get(name)
    if entry is not None and entry.get("status") != "ok":
        raise UserError(f"{name} from stage '{fmt.stage}' failed ({entry.get('reason')}); fix that stage first")
    return ctx.input(fmt.stage, fmt.filename())


@contextlib.contextmanager
def conversion(ctx, name: str, clear: bool = True):
    """Time one conversion; on success log and record time, path and size, on a UserError record the
    artifact as failed with the reason and go on (the other artifacts are still written). ``clear``
    first deletes a file an earlier run left (pass False when the file was just written, and delete
    stale files before writing instead)."""
    entry: dict = {}
    ctx.metrics.setdefault("artifacts", {})[name] = entry
    if clear:  # a file left by an earlier run must never pass for this one
        path_of(ctx, name).unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        with ctx.console.status(f"{name}: converting and checking its accuracy ..."):
            yield entry
    except UserError as exc:
        entry.update(status="failed", reason=str(exc), seconds=round(time.perf_counter() - started, 2),
                     cause="accuracy_gate" if isinstance(exc, GateFailed) else "input")
        ctx.console.print(f"[red]{name}: failed[/red] {escape(str(exc))}", highlight=False)
        return
    path = path_of(ctx, name)
    if not path.exists():  # a conversion that returns must have written its file
        raise UserError(f"{name}: the converter reported success but wrote no {path}; rerun with --debug")
    entry["status"] = "ok"
    entry.update(path=str(path.relative_to(ctx.run.root)), bytes=path.stat().st_size,
                 seconds=round(time.perf_counter() - started, 2))
    extra = f" (+{entry['convert_seconds']:.2f} s converting)" if "convert_seconds" in entry else ""
    extra += drop_text(entry)
    ctx.console.print(f"[green]{name}[/green]: {escape(str(path))} ({entry['bytes'] / 1024:.1f} KiB) in "
                      f"{entry['seconds']:.2f} s{extra}", highlight=False)


def drop_text(entry: dict) -> str:
    """The console's accuracy words for a written artifact: the drop on the split the gate decided on, then the
    test set's (points of top-1 against the fp32 model; negative = the artifact scored higher)."""
    if "drop_points" not in entry:
        return ""
    split = entry.get("gate_split", "test")
    text = f", {split} top-1 drop {entry['drop_points']:+.2f} points"
    if split != "test" and {"test_top1", "fp32_test_top1"} <= entry.keys():
        text += f" (test {100 * (entry['fp32_test_top1'] - entry['test_top1']):+.2f})"
    return text


def written(ctx) -> list[Path]:
    """Files of this stage's artifacts that passed their checks and were written."""
    out = []
    for name, entry in ctx.metrics.get("artifacts", {}).items():
        path = path_of(ctx, name)
        if entry.get("status") == "ok" and path.exists():
            out.append(path)
    return out


def normalized(ds, x_uint8) -> np.ndarray:
    """uint8 NCHW images -> normalised float32 NCHW, exactly as training fed them."""
    return ds.normalize(x_uint8).numpy()  # float32 already: no second copy


class Normalized:
    """A split's uint8 NCHW images, normalised to float32 only as each batch is sliced out (``x[i:j]``).

    The whole split as float32 would be 4x its uint8 size at once: 3 GB for 5,000 photos at 224 px.
    """

    def __init__(self, ds, x_uint8):
        self.ds, self.images = ds, x_uint8
        self.shape, self.ndim = tuple(x_uint8.shape), len(x_uint8.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        return normalized(self.ds, self.images[index])


def calibration_images(ds, n: int, seed: int) -> np.ndarray:
    """``n`` real training images picked at random (fixed seed), normalised; checked for shape."""
    import torch

    if n <= 0 or len(ds.train_x) == 0:
        raise UserError(f"the calibration set is empty (quantize.calibration_images={n}, "
                        f"{len(ds.train_x)} training images); set quantize.calibration_images to 100-1000")
    idx = torch.randperm(len(ds.train_x), generator=torch.Generator().manual_seed(seed))[:n]
    return normalized(ds, ds.train_x[idx])


def check_images(x: np.ndarray, shape: tuple, what: str) -> None:
    """A batch of images must be N x C x H x W with the model's C, H, W and at least one image."""
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape) or len(x) == 0:
        raise UserError(f"{what} has shape {tuple(x.shape)} but the model takes N x {' x '.join(map(str, shape))} "
                        "with N >= 1; use images of the data set the student was trained on")
