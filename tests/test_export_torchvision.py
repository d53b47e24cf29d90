"""Export matrix of the torchvision nets (slow): each net x {ONNX fp32, ONNX int8 (QDQ), TFLite fp32, fp16,
int8} at 32 px, checked against PyTorch on the same inputs. A net's three TFLite precisions share one
converter process, as the quantize stage's do."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import models
from pipeline.export import onnx_tools, ort_quant, tflite_tools

pytestmark = pytest.mark.slow
SIZE, CLASSES = 32, 5
NETS = list(models.TORCHVISION_NETS)
PRECISIONS = ("fp32", "fp16", "int8")


def _net(arch: str):
    """Random weights with non-trivial BatchNorm statistics, so folding or scale errors would show."""
    torch.manual_seed(0)
    model = models.create(arch, 3, CLASSES).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2)
    return model


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Per net, made when a test first asks for it (so ``-k`` chooses which nets are converted): PyTorch's
    logits, the ONNX export, and the three TFLite precisions converted from its checkpoint in one process."""
    root = tmp_path_factory.mktemp("tv")
    x = torch.randn(32, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    ref: dict = {}
    tflite: dict = {}

    def torch_side(arch: str) -> np.ndarray:
        if arch not in ref:
            model = _net(arch)
            with torch.no_grad():
                ref[arch] = model(x).numpy()
            onnx_tools.export(model, root / f"{arch}.onnx", 3, SIZE, 17)
            models.save_checkpoint(root / f"{arch}.pt", model, arch, 1.0,
                                   {"channels": 3, "classes": list("abcde"), "size": SIZE})
        return ref[arch]

    def tflite_side(arch: str) -> dict:
        torch_side(arch)
        if arch not in tflite:
            outputs = {p: root / f"{arch}_{p}.tflite" for p in PRECISIONS}
            meta = {"arch": arch, "input_size": [3, SIZE, SIZE], "classes": list("abcde")}
            tflite[arch] = tflite_tools.convert(root / f"{arch}.pt", outputs, meta, x.numpy())
        return tflite[arch]
    return root, x.numpy(), torch_side, tflite_side


def _close(out: np.ndarray, ref: np.ndarray, rel: float) -> None:
    span = float(ref.max() - ref.min())
    assert np.abs(out - ref).max() <= rel * max(span, 1e-3), (np.abs(out - ref).max(), span)


@pytest.mark.parametrize("arch", NETS)
def test_onnx_fp32_and_int8(matrix, arch, tmp_path):
    root, x, torch_side, _ = matrix
    ref = torch_side(arch)
    src = root / f"{arch}.onnx"
    _close(onnx_tools.logits(src, x), ref, 1e-4)
    pre = tmp_path / "pre.onnx"
    ort_quant.preprocess(src, pre)
    ort_quant.static(pre, tmp_path / "int8.onnx", x, "arm", "MinMax", True, [])
    assert ort_quant.int8_weights(onnx_tools.load(tmp_path / "int8.onnx")) > 0
    _close(onnx_tools.logits(tmp_path / "int8.onnx", x), ref, 0.35)


@pytest.mark.parametrize("arch", NETS)
def test_tflite_precisions(matrix, arch):
    root, x, torch_side, tflite_side = matrix
    ref, result = torch_side(arch), tflite_side(arch)
    bound = {"fp32": 1e-4, "fp16": 0.03, "int8": 0.35}
    for precision in PRECISIONS:
        assert result[precision]["status"] == "ok", result[precision]
        path = root / f"{arch}_{precision}.tflite"
        _close(tflite_tools.logits(path, x, batch=8), ref, bound[precision])
        meta = tflite_tools.metadata(path)
        assert meta["arch"] == arch and meta["layout"] == "NHWC" and meta["input_size"] == [SIZE, SIZE, 3]
        types = tflite_tools.weight_types(path)
        if precision == "fp16":
            assert types.get("float16", 0) > 0
        if precision == "int8":
            assert types.get("int8", 0) > 0
            q = meta["quantization"]
            assert q["input"]["dtype"] == "int8" and q["output"]["dtype"] == "int8" and q["input"]["scale"] > 0
