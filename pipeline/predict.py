"""``compress predict``: a model file of the run on image files, top-k classes with probabilities.

The model runs through deploy/runner.py's adapters (what the benchmark and the device bundle use), and every
input setting (size, channels, normalisation, class names) comes from the model file's own metadata, so the
check is of the file that ships, not of the training code.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.pixels import fit
from pipeline.errors import UserError
from pipeline.export import formats


def choose(run_root: Path, artifact: str | None, max_drop: float) -> formats.Format:
    """The named artifact, else the benchmark's recommendation for this machine."""
    if artifact is None:
        from pipeline.report.results import load_results
        from pipeline.report.table import recommended, table
        results = run_root / "benchmark" / "results.json"
        if not results.is_file():
            raise UserError(f"{results} is missing: run 'compress all' first, or name a model with --artifact")
        doc = load_results(results)
        artifact = recommended(table(doc), max_drop).get(doc["machine"]["device"])
        if artifact is None:
            raise UserError(f"no artifact is within {max_drop} points in {results}; name one with --artifact")
    fmt = formats.get(artifact)
    if fmt.runtime == "torch":
        raise UserError(f"predict runs exported models (ONNX or TFLite), not '{artifact}'; e.g. --artifact onnx_fp32")
    return fmt


def metadata(path: Path, fmt: formats.Format) -> dict:
    if fmt.runtime == "tflite":
        from pipeline.export.tflite_tools import metadata as read
    else:
        from pipeline.export.onnx_tools import metadata as read
    meta = read(path)
    if not {"mean", "std", "input_size", "classes"} <= set(meta):
        raise UserError(f"{path} carries no compress metadata (mean, std, input_size, classes); rebuild it")
    return meta


def load_image(path: Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 C x H x W by pipeline/data/pixels.py's fit, as the training decode makes them."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise UserError(f"{path} does not exist; give the path of an image file")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the image files in it (e.g. {path / '*.jpg'})")
    if not path.is_file():  # a pipe would block the read forever
        raise UserError(f"{path} is not a regular file (a pipe, socket or device); give image files")
    try:
        with Image.open(path) as img:
            pixels = fit(img, size, "L" if channels == 1 else "RGB")
    except Image.DecompressionBombError as exc:  # a huge scan, or a damaged header claiming billions of pixels
        raise UserError(f"{path} has more pixels than Pillow decodes ({exc.args[0].split(' exceeds')[0]}); "
                        "scale it down, or check that the file is not damaged") from exc
    except UnidentifiedImageError as exc:
        raise UserError(f"{path} is not an image file that can be read ({type(exc).__name__}); "
                        "give PNG, JPEG or another common image format") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types: OSError, SyntaxError, ValueError (Lab)...
        raise UserError(f"{path} is not an image file that can be read ({type(exc).__name__}: {exc}); "
                        "give PNG, JPEG or another common image format") from exc
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def predict(run_root: Path, manifest: dict, images: list[Path], artifact: str | None, top: int, max_drop: float):
    """(artifact name, [(image, [(class, probability), ...]), ...])."""
    from deploy.runner import OnnxModel, RuntimeMissing, TfliteModel, normalize
    from pipeline.export.inventory import locate

    fmt = choose(run_root, artifact, max_drop)
    path = locate(run_root, manifest, fmt.name)
    meta = metadata(path, fmt)
    c, h, w = meta["input_size"] if meta.get("layout", "NCHW") == "NCHW" else np.roll(meta["input_size"], 1)
    batch = np.stack([load_image(Path(p), c, (h, w)) for p in images])  # every file checked before running
    try:
        model = (TfliteModel if fmt.runtime == "tflite" else OnnxModel)(str(path), 1, (c, h, w))
    except RuntimeMissing as exc:  # its message is the pip command
        raise UserError(str(exc)) from None
    x = normalize(batch, meta["mean"], meta["std"])
    out = []
    for image, row in zip(images, x):
        logits = model.logits(model(model.prepare(row[None])))[0]
        prob = np.exp(logits - logits.max())
        prob /= prob.sum()
        best = np.argsort(-prob)[:top]
        out.append((image, [(meta["classes"][i], float(prob[i])) for i in best]))
    return fmt.name, out
