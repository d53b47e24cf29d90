"""TFLite side (slow: litert-torch converts in a subprocess): matrix over our CIFAR nets and every
precision, int8 tensor types, metadata read back, and the full quantize stage. The torchvision nets have
their own matrix in test_export_torchvision.py."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from student_fixture import smoke_config

from pipeline import models
from pipeline.export import artifacts, onnx_tools, tflite_tools

pytestmark = pytest.mark.slow
PRECISIONS = ("fp32", "fp16", "int8")


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Per CIFAR net at width 0.25 and 8 px: its ONNX logits (the reference) and the three TFLite precisions
    converted from its checkpoint in one converter process, made when a test first asks for that net, so
    ``-k`` chooses which nets are converted (each conversion takes seconds)."""
    root = tmp_path_factory.mktemp("matrix")
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    done: dict = {}

    def get(arch: str):
        if arch not in done:
            torch.manual_seed(0)
            model = models.create(arch, 3, 5, 0.25).eval()
            path = root / f"{arch}.onnx"
            onnx_tools.export(model, path, 3, 8, 17)
            ckpt = models.save_checkpoint(root / f"{arch}.pt", model, arch, 0.25,
                                          {"channels": 3, "classes": list("abcde"), "size": 8})
            meta = {"arch": arch, "input_size": [3, 8, 8], "mean": [0.5] * 3, "std": [0.25] * 3,
                    "classes": list("abcde")}
            outputs = {p: root / f"{arch}_{p}.tflite" for p in PRECISIONS}
            done[arch] = onnx_tools.logits(path, x.numpy()), tflite_tools.convert(ckpt, outputs, meta, x.numpy())
        return done[arch]
    return root, x.numpy(), get


@pytest.mark.parametrize("arch", list(models.CIFAR_NETS))
def test_tflite_matrix(matrix, arch):
    root, x, get = matrix
    ref, result = get(arch)
    for precision in PRECISIONS:
        assert result[precision]["status"] == "ok", result[precision]
        path = root / f"{arch}_{precision}.tflite"
        out = tflite_tools.logits(path, x, batch=16)
        lazy = artifacts.Normalized(SimpleNamespace(normalize=lambda t: t), torch.from_numpy(x))
        assert (tflite_tools.logits(path, lazy, batch=24) == out).all()  # batches sliced out lazily
        span = float(ref.max() - ref.min())
        # fp32 is exact up to summation order; fp16 weights and int8 are bounded relative to the logit range
        bound = {"fp32": 1e-4 * max(span, 1), "fp16": 0.02 * span, "int8": 0.25 * span}[precision]
        assert np.abs(out - ref).max() <= bound, (precision, np.abs(out - ref).max(), span)
        meta = tflite_tools.metadata(path)
        assert meta["arch"] == arch and meta["layout"] == "NHWC" and meta["input_size"] == [8, 8, 3]
        assert meta["format"] == f"tflite_{precision}" and meta["mean"] == [0.5] * 3
        types = tflite_tools.weight_types(path)
        if precision == "fp32":
            assert "int8" not in types and "float16" not in types
        elif precision == "fp16":
            assert types.get("float16", 0) > 0
        else:
            assert types.get("int8", 0) > 0 and "float16" not in types
            # wide ResNets batch-normalise the stem's output, which the first residual also adds unnormalised:
            # that BN cannot fold into a conv, and PT2E leaves it in float (one float32 constant in wrn16_1)
            assert "float32" not in types or arch.startswith("wrn"), types
            quant = meta["quantization"]
            assert quant["input"]["dtype"] == "int8" and quant["output"]["dtype"] == "int8"
            assert meta["quantization"]["input"]["scale"] > 0


def test_quantize_stage_with_tflite(tmp_path):
    from test_quantize import prepared, quantize

    cfg = smoke_config("quantize.max_drop=5.0")
    run = prepared(tmp_path, cfg)
    ctx = quantize(run, cfg)
    assert ctx.error is None, ctx.error
    arts = ctx.metrics["artifacts"]
    for p in PRECISIONS:
        entry = arts[f"tflite_{p}"]
        assert entry["status"] == "ok" and entry["drop_points"] <= 5.0, entry
        assert tflite_tools.metadata(run.root / "quantize" / f"tflite_{p}.tflite")["classes"] == ["class0", "class1",
                                                                                                   "class2", "class3"]
    assert arts["tflite_int8"]["input"]["dtype"] == "int8" and arts["tflite_int8"]["weight_types"]["int8"] > 0


def test_tflite_int8_gate_fails_bad_model_and_goes_on(tmp_path):
    from test_quantize import prepared, quantize, shifted_logits_model

    cfg = smoke_config("quantize.targets=[]", "quantize.max_drop=5.0", "quantize.qat=off")  # the gate alone
    run = prepared(tmp_path, cfg, model=shifted_logits_model(smoke_config()))
    ctx = quantize(run, cfg)
    arts = ctx.metrics["artifacts"]
    assert arts["tflite_int8"]["status"] == "failed" and arts["tflite_int8"]["cause"] == "accuracy_gate"
    assert not (run.root / "quantize" / "tflite_int8.tflite").exists()
    assert arts["tflite_fp32"]["status"] == "ok" and ctx.error is None


def test_bad_checkpoint_fails_tflite_with_the_reason(tmp_path):
    result = tflite_tools.convert(tmp_path / "missing.pt", {"fp32": tmp_path / "x.tflite"}, {"input_size": [1, 4, 4]},
                                  None)
    assert result["fp32"]["status"] == "failed" and "does not exist" in result["fp32"]["reason"]


def test_relative_paths_from_the_users_folder_convert(tmp_path, monkeypatch):
    """`compress -r runs/x` from any folder: the converter process runs elsewhere, so it gets absolute paths."""
    torch.manual_seed(0)
    model = models.create("resnet8", 3, 5, 0.25).eval()
    models.save_checkpoint(tmp_path / "net.pt", model, "resnet8", 0.25, {"channels": 3, "classes": list("abcde"),
                                                                         "size": 8})
    monkeypatch.chdir(tmp_path)
    meta = {"arch": "resnet8", "input_size": [3, 8, 8], "mean": [0.5] * 3, "std": [0.25] * 3, "classes": list("abcde")}
    result = tflite_tools.convert(Path("net.pt"), {"fp32": Path("net_fp32.tflite")}, meta, None)
    assert result["fp32"]["status"] == "ok", result
    assert (tmp_path / "net_fp32.tflite").is_file()


def test_a_folder_named_with_brackets_converts(tmp_path):
    """litert-torch prints the output path as rich markup, where '[/old]' is a closing tag that crashed it."""
    torch.manual_seed(0)
    model = models.create("resnet8", 1, 3, 0.25).eval()
    models.save_checkpoint(tmp_path / "net.pt", model, "resnet8", 0.25, {"channels": 1, "classes": list("abc"),
                                                                         "size": 8})
    out = tmp_path / "a[" / "old]" / "[x]"
    out.mkdir(parents=True)
    meta = {"arch": "resnet8", "input_size": [1, 8, 8], "mean": [0.5], "std": [0.25], "classes": list("abc")}
    result = tflite_tools.convert(tmp_path / "net.pt", {p: out / f"{p}.tflite" for p in ("fp32", "fp16")}, meta, None)
    for p in ("fp32", "fp16"):
        assert result[p]["status"] == "ok", result
        assert tflite_tools.metadata(out / f"{p}.tflite")["classes"] == list("abc")
