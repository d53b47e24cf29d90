"""Write Fashion-MNIST as a folder of tinted RGB photos, with the junk real folders hold, for configs/photos.yaml.

    .venv/bin/python benchmarks/make_photo_folder.py data/photos --images 12000

One subfolder per class; each image is upsampled to a random size between 80 and 128 px (not square one time in
four), tinted with a random colour on a random background colour, and saved as JPEG (1 in 10 as PNG, some of
those grayscale or RGBA). Junk added on purpose: a notes.txt and a hidden .DS_Store in a class folder, an empty
.jpg, a truncated JPEG and a text file named .png (three unreadable images, well under data.max_bad_fraction).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import data
from pipeline.config import DataConfig


def tinted(img: np.ndarray, rng: np.random.Generator) -> Image.Image:
    fg, bg = rng.uniform(0.3, 1.0, 3), rng.uniform(0.0, 0.35, 3)
    a = img.astype(np.float32)[..., None] / 255
    rgb = (a * fg + (1 - a) * bg) * 255 + rng.normal(0, 4, (*img.shape, 3))
    w = int(rng.integers(80, 129))
    h = w if rng.random() < 0.75 else int(w * rng.uniform(0.8, 1.25))
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ds = data.load(DataConfig(dataset="fashion_mnist", download=False, val_fraction=0.0))
    rng = np.random.default_rng(args.seed)
    names = [c.replace("/", "-").replace(" ", "_") for c in ds.classes]
    started = time.perf_counter()
    for i in range(min(args.images, len(ds.train_y))):
        label = int(ds.train_y[i])
        folder = args.out / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        img = tinted(ds.train_x[i, 0].numpy(), rng)
        if i % 10 == 0:
            img = img.convert(("L", "RGBA", "RGB")[i // 10 % 3])
            img.save(folder / f"{i:05d}.png")
        else:
            img.save(folder / f"{i:05d}.jpg", quality=90)
    first = args.out / names[0]
    (first / "notes.txt").write_text("shot on the kitchen table, natural light\n")
    (first / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (first / "empty.jpg").write_bytes(b"")
    whole = next(first.glob("0*.jpg")).read_bytes()
    (first / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (args.out / names[1] / "readme.png").write_text("not an image")
    print(f"wrote {min(args.images, len(ds.train_y))} images to {args.out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
