"""Photo folders: junk files, layouts, unreadable images, the decode cache, image_size, resized-crop augmentation."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from console_text import squeeze
from PIL import Image

from pipeline import data, predict
from pipeline.config import DataConfig
from pipeline.data import batches, imagefolder, photo_scan
from pipeline.errors import UserError


def _photo(path, colour, size=(40, 30), mode="RGB"):
    img = Image.new("RGB", size, colour)
    img = img.convert(mode) if mode != "RGB" else img
    img.save(path)


def _folder(root, classes=("cat", "dog"), n=10, start=0, size=(40, 30)):
    for c, base in zip(classes, (40, 200, 120)):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            _photo(root / c / f"{i:03d}.jpg" if i % 2 else root / c / f"{i:03d}.png", (base, i * 3, 90), size)


def _cfg(root, tmp_path, **kw):
    return DataConfig(**{"dataset": "imagefolder", "root": str(root), "image_size": 16,
                         "cache_dir": str(tmp_path / "cache"), **kw})


def test_junk_is_ignored_or_skipped_and_reported(tmp_path):
    root = tmp_path / "photos"
    _folder(root, n=60, size=(40, 30))
    cat, dog = root / "cat", root / "dog"
    (cat / "notes.txt").write_text("not a photo")
    (cat / ".DS_Store").write_bytes(b"\0\1")
    (cat / ".hidden.jpg").write_bytes(b"\0\1")
    (cat / "empty.jpg").write_bytes(b"")
    good = (cat / "001.jpg").read_bytes()
    (dog / "truncated.jpg").write_bytes(good[: len(good) // 2])
    _photo(dog / "gray.png", 128, (64, 48), "L")
    _photo(dog / "alpha.png", (10, 20, 30), (30, 30), "RGBA")
    _photo(dog / "palette.bmp", (10, 20, 30), (25, 50), "P")
    ds = data.load(_cfg(root, tmp_path, max_bad_fraction=0.05), seed=0)
    n = len(ds.train_y) + len(ds.val_y) + len(ds.test_y)
    assert n == 123  # 120 + the three odd modes; empty and truncated skipped
    assert ds.train_x.shape[1:] == (3, 16, 16) and ds.train_x.dtype == torch.uint8
    assert ds.report["ignored"] == {"hidden": 2, "not an image": 1}
    assert sorted(os.path.basename(p) for p in ds.report["skipped"]) == ["empty.jpg", "truncated.jpg"]
    written = data.write_report(ds, tmp_path)
    assert json.loads(written[0].read_text())["skipped"] == ds.report["skipped"]


def test_too_many_unreadable_images_stop_with_one_line_naming_them(tmp_path):
    root = tmp_path / "photos"
    _folder(root, n=20)
    for i in range(3):
        (root / "dog" / f"bad{i}.jpg").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"3 of 43 images cannot be decoded .*bad0.jpg, .*bad1.jpg, .*bad2.jpg"):
        data.load(_cfg(root, tmp_path), seed=0)  # 1% allowed by default
    assert not list((tmp_path / "cache").glob("*/index.json"))  # nothing half-written is kept


@pytest.mark.parametrize("junk", ["val", "all"])
def test_a_split_with_no_readable_image_stops_before_training(tmp_path, junk):
    root = tmp_path / "photos"
    _folder(root / "train", n=6)
    for c in ("cat", "dog"):
        (root / "val" / c).mkdir(parents=True)
        for i in range(3):
            (root / "val" / c / f"bad{i}.jpg").write_bytes(b"junk")
    if junk == "all":
        for path in (root / "train").rglob("*.*"):
            path.write_bytes(b"junk")
    split, folder = ("train", "train") if junk == "all" else ("test", "val")  # val/ beside train/ alone: the test split
    with pytest.raises(UserError, match=rf"no image of the {split} split can be read \(\d+ files, e.g. \S*/{folder}/"):
        data.load(_cfg(root, tmp_path, max_bad_fraction=1.0), seed=0)


def test_flat_folder_split_is_stratified_seeded_and_disjoint(tmp_path):
    root = tmp_path / "photos"
    _folder(root, n=50)
    cfg = _cfg(root, tmp_path, test_fraction=0.2, val_fraction=0.1)
    ds = data.load(cfg, seed=0)
    assert torch.bincount(ds.test_y).tolist() == [10, 10] and torch.bincount(ds.val_y).tolist() == [4, 4]
    assert len(ds.train_y) == 72 and set(ds.train_y[:10].tolist()) == {0, 1}  # shuffled: a prefix has both
    pixel = lambda x: {tuple(img[:, 8, 8].tolist()) for img in x}  # noqa: E731 (every photo is unique)
    assert not pixel(ds.train_x) & pixel(ds.test_x) and not pixel(ds.train_x) & pixel(ds.val_x)
    again, other = data.load(cfg, seed=0), data.load(cfg, seed=1)
    assert torch.equal(again.test_x, ds.test_x) and not torch.equal(other.test_x, ds.test_x)


@pytest.mark.parametrize("splits", [("train", "val"), ("train", "val", "test"), ("train", "test")])
def test_given_layouts_are_used_as_given(tmp_path, splits):
    root = tmp_path / "photos"
    for k, split in enumerate(splits):
        _folder(root / split, n=10 if split == "train" else 3, start=100 * k)
    ds = data.load(_cfg(root, tmp_path), seed=0)
    assert len(ds.test_y) == 6  # val/ is the report's split when there is no test/
    if "val" in splits and "test" in splits:
        assert len(ds.val_y) == 6 and len(ds.train_y) == 20
    else:  # validation comes out of train/, never out of the reported split
        assert len(ds.val_y) == 2 and len(ds.train_y) == 18
    (root / splits[1] / "bird").mkdir()
    _photo(root / splits[1] / "bird" / "x.png", (1, 2, 3))
    with pytest.raises(UserError, match="bird"):
        data.load(_cfg(root, tmp_path), seed=0)


def _empty_val(root):
    _folder(root / "train", n=6)
    (root / "val").mkdir()


def _lacking_class(root):
    _folder(root / "train", n=6)
    _folder(root / "val", classes=("cat",), n=3)


@pytest.mark.parametrize("make, message", [
    (lambda r: (_folder(r, n=6), (r / "fox").mkdir()), r"class folder .*photos/fox has no images; remove it or add"),
    (lambda r: (_folder(r, classes=("cat",), n=6), (r / "dog").mkdir()), r"class folder .*/dog has no images"),
    (lambda r: _folder(r, classes=("cat",), n=6), r"has 1 class folder\(s\) \['cat'\]; a classifier needs two"),
    (_lacking_class, r"val has no images of class 'dog', which train/ has; add some to .*val/dog"),
    (lambda r: _folder(r / "test", n=6), r"photos/test needs a train/ folder beside it"),
    (lambda r: _folder(r / "train", n=6), r"photos/train needs val/ or test/ beside it, or put the class folders at"),
    (_empty_val, r"photos/val has no images; put one subfolder of images per class in it"),
    (lambda r: (_folder(r / "Train", n=6), _folder(r / "Val", n=3)), r"Train/, Val/ in .* must be lower case"),
    (lambda r: _folder(r, n=3), r"3 images of class 'cat' are too few to hold out data.test_fraction=0.1 .*add images"),
], ids=["extra empty class", "one class with images", "one class", "val lacks a class", "test alone", "train alone",
        "empty val", "capitalised", "too few images"])
def test_a_folder_that_makes_no_sound_classifier_says_what_to_fix(tmp_path, make, message):
    make(tmp_path / "photos")
    with pytest.raises(UserError, match=message):
        photo_scan.scan(tmp_path / "photos", 0.1, 0.1, 0)


def test_a_class_named_train_is_a_class_in_the_flat_layout(tmp_path):
    _folder(tmp_path / "photos", classes=("Train", "bus"), n=6)
    assert photo_scan.scan(tmp_path / "photos", 0.1, 0.1, 0).classes == ["Train", "bus"]


def test_root_may_start_with_a_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _folder(tmp_path / "photos", n=6)
    assert photo_scan.scan(Path("~/photos"), 0.1, 0.1, 0).root == str(tmp_path / "photos")


def test_decode_cache_is_reused_and_invalidated_by_a_changed_file(tmp_path):
    root = tmp_path / "photos"
    _folder(root, n=12)
    first = data.load(_cfg(root, tmp_path), seed=0)
    decoded = _entries(tmp_path / "cache")
    second = data.load(_cfg(root, tmp_path), seed=0)
    assert _entries(tmp_path / "cache") == decoded and torch.equal(first.train_x, second.train_x)  # not decoded again
    storage = second.train_x.untyped_storage().data_ptr()  # every split is a view of one memory map, not a copy
    assert second.val_x.untyped_storage().data_ptr() == storage == second.test_x.untyped_storage().data_ptr()
    _photo(root / "cat" / "000.png", (255, 255, 255))  # same name, new content and mtime
    third = data.load(_cfg(root, tmp_path), seed=0)
    entries = lambda: sorted(p.parent.name for p in (tmp_path / "cache").glob("*/index.json"))  # noqa: E731
    assert len(entries()) == 1  # decoded again, and the stale decode of the old folder removed
    total = lambda ds: sum(x.double().sum() for x in (ds.train_x, ds.val_x, ds.test_x))  # noqa: E731
    assert total(third) > total(first)  # the new white photo, wherever the split put it
    assert data.load(_cfg(root, tmp_path, image_size=24), seed=0).train_x.shape[2:] == (24, 24)
    data.load(_cfg(root, tmp_path, val_fraction=0.3), seed=0)
    kept = entries()
    assert len(kept) == 3  # other sizes and split settings of the same files are not stale
    (root / "dog" / "099.png").write_bytes((root / "dog" / "001.jpg").read_bytes())  # one image added
    data.load(_cfg(root, tmp_path, image_size=24), seed=0)
    assert len(entries()) == 3 and len(set(entries()) - set(kept)) == 1  # only the 24 px entry was replaced
    on_disk = sum(f.stat().st_size for f in (tmp_path / "cache").rglob("*") if f.is_file())
    assert imagefolder.cache_usage(tmp_path / "cache") == (3, on_disk)


def _decode_after(go, root: Path, cache: Path, log: Path) -> None:
    go.wait()
    sc = photo_scan.scan(root, 0.2, 0.1, 0)
    imagefolder.decode(sc, 16, cache, 0.5, log=lambda m: log.open("a").write(m + "\n"), workers=1)


def test_processes_decoding_one_folder_at_once_decode_it_once(tmp_path):
    """torchrun's ranks load the same folder at the same moment: one decodes, the others wait and read it."""
    import multiprocessing

    root = tmp_path / "photos"
    _folder(root, n=150)
    ctx = multiprocessing.get_context("spawn")  # a fork of this process, with its thread pools, can hang
    go = ctx.Event()
    procs = [ctx.Process(target=_decode_after, args=(go, root, tmp_path / "cache", tmp_path / f"log{i}"))
             for i in range(3)]
    for proc in procs:
        proc.start()
    go.set()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    logs = "".join((tmp_path / f"log{i}").read_text() for i in range(3) if (tmp_path / f"log{i}").exists())
    assert logs.count("decoded 300 images") == 1, logs
    assert len(_entries(tmp_path / "cache")) == 1


def test_a_cache_on_a_file_system_without_locks_still_decodes(tmp_path, monkeypatch):
    import errno

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(imagefolder.fcntl, "flock", no_locks)
    root = tmp_path / "photos"
    _folder(root, n=12)
    assert len(data.load(_cfg(root, tmp_path), seed=0).train_y) > 0
    assert len(_entries(tmp_path / "cache")) == 1


def _entries(cache: Path) -> dict[str, int]:
    """Decode-cache entries with their index.json's inode: a rebuilt entry gets a new one."""
    return {p.parent.name: p.stat().st_ino for p in cache.glob("*/index.json")}


def test_a_symlinked_folder_shares_its_targets_decode(tmp_path):
    root = tmp_path / "photos"
    _folder(root, n=12)
    (tmp_path / "link").symlink_to(root)
    first = data.load(_cfg(root, tmp_path), seed=0)
    entries = _entries(tmp_path / "cache")
    for folder in (tmp_path / "link", root):  # neither decodes again nor evicts the other's entry
        assert torch.equal(data.load(_cfg(folder, tmp_path), seed=0).train_x, first.train_x)
        assert _entries(tmp_path / "cache") == entries


def test_status_shows_the_decode_cache(cli, tmp_path):
    root = tmp_path / "photos"
    _folder(root, n=6)
    data.load(_cfg(root, tmp_path), seed=0)
    result = cli("-c", "smoke", "-r", str(tmp_path / "run"), "--set", "data.dataset=imagefolder", "--set",
                 f"data.root={root}", "--set", f"data.cache_dir={tmp_path / 'cache'}", "status")
    assert result.exit_code == 0, result.output
    assert squeeze(f"decode cache: {tmp_path / 'cache'} (1 decoded folder(s)") in squeeze(result.output)


def test_resize_shorter_side_then_centre_crop(tmp_path):
    img = Image.new("RGB", (60, 30), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 15, 30))  # red left quarter: outside the centre crop
    img.save(tmp_path / "wide.png")
    out = imagefolder.decode_one(str(tmp_path / "wide.png"), 20)
    assert out.shape == (20, 20, 3) and out[..., 0].max() < 30 and out[..., 2].min() > 220
    assert imagefolder.decode_one(str(tmp_path / "missing.png"), 20) is None


def test_centre_box_resize_matches_resizing_the_whole_then_cropping(tmp_path):
    yy, xx = np.mgrid[0:240, 0:320]
    photo = np.stack([128 + 100 * np.sin(xx / 50), 128 + 100 * np.cos(yy / 45), (xx + yy) / 2.2], -1)
    Image.fromarray(photo.astype(np.uint8)).save(tmp_path / "photo.png")
    whole = Image.fromarray(photo.astype(np.uint8)).resize((299, 224), Image.Resampling.BILINEAR, reducing_gap=3.0)
    before = np.asarray(whole.crop((37, 0, 37 + 224, 224)), np.int16)  # the shorter side resized, then cropped
    diff = np.abs(imagefolder.decode_one(str(tmp_path / "photo.png"), 224).astype(np.int16) - before)
    assert diff.mean() < 0.5 and diff.max() <= 3  # resampling rounding: the box is centred exactly


def test_a_very_long_image_is_never_enlarged_whole(tmp_path, monkeypatch):
    Image.new("RGB", (20000, 1), (10, 20, 30)).save(tmp_path / "long.png")
    real = Image.Image.resize

    def small_resize(img, size, *args, **kwargs):  # resizing the shorter side first would make 4480000 x 224
        assert size[0] * size[1] <= 224 * 224, f"resized to {size}"
        return real(img, size, *args, **kwargs)
    monkeypatch.setattr(Image.Image, "resize", small_resize)
    out = imagefolder.decode_one(str(tmp_path / "long.png"), 224)
    assert out is not None and out.shape == (224, 224, 3) and (out == (10, 20, 30)).all()


DECODERS = {"decode": lambda path: imagefolder.decode_one(str(path), 8),
            "predict": lambda path: predict.load_image(path, 3, (8, 8)).transpose(1, 2, 0)}


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("pixels, name, expected", [
    (np.full((12, 12), 30000, np.uint16), "deep.png", 30000 >> 8),  # opens as I;16
    (np.full((12, 12), 0.5, np.float32), "float.tif", 127),  # opens as F
])
def test_16_bit_and_float_pixels_become_8_bits(tmp_path, decoder, pixels, name, expected):
    Image.fromarray(pixels).save(tmp_path / name)
    assert (DECODERS[decoder](tmp_path / name) == expected).all()


@pytest.mark.parametrize("decoder", DECODERS)
def test_exif_orientation_is_applied(tmp_path, decoder):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # stored: red left, blue right
    exif = img.getexif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: red on top, blue below
    img.save(tmp_path / "phone.jpg", exif=exif)
    out = DECODERS[decoder](tmp_path / "phone.jpg").astype(int)
    assert out[0, 0, 0] > 200 > out[0, 0, 2] and out[-1, 0, 2] > 200 > out[-1, 0, 0]


def test_predict_and_the_training_decode_give_the_same_pixels_for_a_large_jpeg(tmp_path):
    """Both decode a JPEG at a reduced scale (PIL's draft) before the resize: without it in predict, the two
    resample from different sources and differ by several levels."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (600, 900, 3), np.uint8)).resize((1800, 1200)).save(tmp_path / "big.jpg")
    decoded = imagefolder.decode_one(str(tmp_path / "big.jpg"), 64)
    predicted = predict.load_image(tmp_path / "big.jpg", 3, (64, 64)).transpose(1, 2, 0)
    assert np.array_equal(decoded, predicted)


def test_image_size_upsamples_in_memory_sets():
    cfg = DataConfig(dataset="synthetic", synthetic_train=64, synthetic_test=16, synthetic_size=16, image_size=40)
    ds = data.load(cfg, seed=0)
    assert ds.train_x.shape[1:] == (1, 40, 40) and ds.test_x.shape[1:] == (1, 40, 40) and ds.meta()["size"] == 40


def test_resized_crop_flip_on_whole_batches():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 3, 32, 32)
    x = x.repeat(32, 1, 1, 1)
    a = batches.augment(x, "resized_crop_flip", torch.Generator().manual_seed(0))
    b = batches.augment(x, "resized_crop_flip", torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    changed = (a != x).flatten(1).any(1)
    assert changed.float().mean() > 0.9  # nearly every image is cropped, zoomed or flipped


@pytest.mark.slow
def test_whole_chain_on_a_photo_folder_with_torchvision_nets(cli, tmp_path):
    root = tmp_path / "photos"
    _folder(root, classes=("cat", "dog", "fox"), n=40, size=(48, 40))
    (root / "cat" / "notes.txt").write_text("junk")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    run = tmp_path / "run"
    args = ["-c", "smoke", "-r", str(run), "--set", "data.dataset=imagefolder", "--set", f"data.root={root}",
            "--set", "data.image_size=32", "--set", "data.max_bad_fraction=0.02", "--set", "teacher.arch=resnet18",
            "--set", "teacher.width=1.0", "--set", "student.arch=mobilenet_v3_small", "--set", "student.width=1.0",
            "--set", "adapt.stages=[2]", "--set", "quantize.tflite=[]", "--set", "quantize.max_drop=100"]
    result = cli(*args, "all")
    assert result.exit_code == 0, result.output
    report = json.loads((run / "teacher" / "data_report.json").read_text())
    assert report["ignored"]["not an image"] == 1 and [os.path.basename(p) for p in report["skipped"]] == ["broken.jpg"]
    doc = json.loads((run / "benchmark" / "results.json").read_text())
    ok = {r["artifact"] for r in doc["rows"] if r["status"] == "ok"}
    assert {"onnx_fp32", "onnx_int8_x86", "onnx_int8_arm"} <= ok
    import onnx

    dims = onnx.load(str(run / "export" / "onnx_fp32.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1:] == [3, 32, 32]


def test_a_photo_whose_crop_box_rounds_past_its_edge_still_decodes(tmp_path):
    # 94 x 96 at 96 px: 96 / (96 / 94) is a hair above 94, which made a negative box offset Pillow refuses
    Image.new("RGB", (94, 96), (200, 100, 50)).save(tmp_path / "narrow.jpg")
    out = imagefolder.decode_one(str(tmp_path / "narrow.jpg"), 96)
    assert out is not None and out.shape == (96, 96, 3)
