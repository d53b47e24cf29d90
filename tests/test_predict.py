"""`compress predict` on image files, against the ONNX model run directly on the same pixels; paths that are
not image files."""
import os
import signal

import numpy as np
import pytest
from PIL import Image

from pipeline import config, data, predict
from pipeline.errors import UserError
from pipeline.export import onnx_tools


@pytest.mark.slow
def test_predict_matches_the_model_and_refuses_a_non_image(cli, smoke_run, tmp_path):
    assert cli(*smoke_run, "export").exit_code == 0
    ds = data.load(config.load("smoke").data)
    files = []
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(ds.test_x[i, 0].numpy()).save(path)  # native size: no resizing
        files.append(str(path))
    rgba = tmp_path / "big.png"  # another size and mode: converted, resized and cropped
    Image.fromarray(np.full((40, 30, 4), 200, np.uint8), "RGBA").save(rgba)
    result = cli(*smoke_run, "predict", "-a", "onnx_fp32", "-k", "1", *files, str(rgba))
    assert result.exit_code == 0, result.output
    onnx = tmp_path / "run/export/onnx_fp32.onnx"
    expected = onnx_tools.logits(onnx, ds.normalize(ds.test_x[:4].float()).numpy()).argmax(1)
    lines = [line for line in result.output.splitlines() if line.startswith(str(tmp_path / "img"))]
    assert [line.split(": ")[1].split()[0] for line in lines] == [ds.classes[k] for k in expected]
    assert any(line.startswith(str(rgba)) for line in result.output.splitlines())

    junk = tmp_path / "notes.txt"
    junk.write_text("not a picture")
    bad = cli(*smoke_run, "predict", "-a", "onnx_fp32", str(junk))
    assert bad.exit_code == 2 and "notes.txt is not an image file" in bad.output
    assert cli(*smoke_run, "predict", "-a", "onnx_fp33", files[0]).exit_code == 2
    missing = cli(*smoke_run, "predict", files[0])  # no benchmark yet: nothing is recommended
    assert missing.exit_code == 2 and "--artifact" in missing.output


def _timeout(signum, frame):
    raise RuntimeError("load_image blocked for 5 s")  # not an OSError, which load_image would take as a bad image


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist"),
    (os.mkdir, "is a folder; give the image files in it"),
    (os.mkfifo, "is not a regular file"),  # opening a pipe for reading blocks until something writes to it
], ids=["missing", "folder", "fifo"])
def test_a_path_that_is_not_an_image_file_says_what_it_is(tmp_path, make, message):
    make(tmp_path / "x.jpg")
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(5)
    try:
        with pytest.raises(UserError, match=message):
            predict.load_image(tmp_path / "x.jpg", 3, (8, 8))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _lab_tiff(path):
    Image.new("LAB", (20, 20)).save(path)  # Photoshop saves these; Pillow cannot make L of Lab


def _big_png(path):
    Image.new("L", (40, 40)).save(path)  # over twice the lowered pixel limit: DecompressionBombError


@pytest.mark.parametrize("make, message", [
    (_lab_tiff, r"x.tif is not an image file that can be read \(ValueError: conversion from LAB to \w+ not supported"),
    (_big_png, r"x.tif has more pixels than Pillow decodes \(Image size \(1600 pixels\)\); scale it down"),
], ids=["lab", "huge"])
def test_an_image_pillow_cannot_convert_or_decode_is_a_one_line_error(tmp_path, monkeypatch, make, message):
    """These ended in 'internal error' (exit 1) and, for a batch, without naming the file."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    make(tmp_path / "x.tif")
    with pytest.raises(UserError, match=message):
        predict.load_image(tmp_path / "x.tif", 1, (8, 8))  # a grey model, as the smoke run's


def test_a_missing_runtime_is_a_one_line_error_saying_what_to_install(tmp_path, monkeypatch):
    """RuntimeMissing is not a UserError: predict ended in 'internal error' (exit 1) instead of the pip line."""
    import sys

    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "onnx_fp32.onnx").write_bytes(b"unused: the runtime import fails first")
    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    meta = {"mean": [0.5], "std": [0.5], "input_size": [1, 8, 8], "classes": ["a", "b"]}
    monkeypatch.setattr(predict, "metadata", lambda path, fmt: meta)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match="onnxruntime is not installed: pip install onnxruntime"):
        predict.predict(tmp_path, {"stages": {}}, [tmp_path / "x.png"], "onnx_fp32", 1, 0.5)
