"""An opened image as a model sees it: the one conversion the training decode (pipeline/data/imagefolder.py) and
``compress predict`` share, so that a photo gives the same pixels in both.

Kept free of torch so that ``compress predict`` does not load it.
"""
from __future__ import annotations

import numpy as np


def fit(img, size: tuple[int, int], mode: str = "RGB") -> np.ndarray:
    """uint8 pixels of a PIL image just opened (not loaded yet), at ``size`` (h, w), (h, w, 3) for RGB or (h, w)
    for L: a JPEG decoded at the smallest reduced scale no smaller than the output, turned upright by its EXIF
    orientation (in place), 16-bit pixels shifted and float pixels scaled to 8 bits, converted to ``mode``,
    then the largest centred box of the output's shape, taken in the source's coordinates, resized to ``size``
    (bilinear). That is resizing the shorter side and cropping the centre without ever building the resized
    whole, so memory stays bounded by the output however long or tall the image."""
    from PIL import Image, ImageOps

    img.draft("RGB", (max(size),) * 2)  # JPEG only; other formats ignore it
    ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of an image that is upright already
    if img.mode.startswith("I"):  # 16-bit PNG or TIFF: I;16 (or I, 32-bit integers, as older Pillow opens them)
        img = Image.fromarray((np.asarray(img) >> 8).clip(0, 255).astype(np.uint8))
    elif img.mode == "F":  # float TIFF: 0..1, or 0..255 when some pixel is above 1
        x = np.nan_to_num(np.asarray(img))
        img = Image.fromarray((x * 255 if x.max() <= 1 else x).clip(0, 255).astype(np.uint8))
    img = img.convert(mode)
    h, w = size
    scale = max(w / img.width, h / img.height)
    # clamped: w / scale can exceed the width by a rounding error, and Pillow refuses a negative box offset
    left, top = max(0.0, (img.width - w / scale) / 2), max(0.0, (img.height - h / scale) / 2)
    box = (left, top, img.width - left, img.height - top)
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0))
