"""An opened image as a model sees it: the one conversion the training decode (pipeline/imagefolder.py) and
``compress predict`` share, so that a photo gives the same pixels in both.

Kept free of torch so that ``compress predict`` does not load it.
"""
from __future__ import annotations

import numpy as np


def fit(img, size: tuple[int, int], mode: str = "RGB") -> np.ndarray:
    """uint8 pixels of a PIL image at ``size`` (h, w), (h, w, 3) for RGB or (h, w) for L: converted to ``mode``,
    then the largest centred box of the output's shape, taken in the source's coordinates, resized to ``size``
    (bilinear), which is resizing the shorter side and cropping the centre without ever building the resized
    whole, so memory stays bounded by the output however long or tall the image."""
    from PIL import Image

    img = img.convert(mode)
    h, w = size
    scale = max(w / img.width, h / img.height)
    left, top = (img.width - w / scale) / 2, (img.height - h / scale) / 2
    box = (left, top, img.width - left, img.height - top)
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0))
