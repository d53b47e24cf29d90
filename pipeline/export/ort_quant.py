"""ONNX Runtime INT8: static (calibrated on real images) per deployment target, and dynamic-range."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from pipeline.errors import unknown

METHODS = ("MinMax", "Entropy", "Percentile")
# target -> (activation type, weight type). Both use the QDQ form: ORT fuses QDQ pairs into its
# integer kernels on x86, and QDQ is what ARM runtimes (ORT's ARM builds, NNAPI, QNN) accelerate.
# On x86, uint8 activations with int8 weights hit the VNNI/AVX2 u8*s8 kernels (about 2x faster than fp32 on
# the default student), while int8 activations were slower than fp32, hence two artifacts.
# reduce_range stays off: it costs accuracy on CPUs with VNNI; on x86 CPUs without VNNI u8*s8 products can
# saturate, which the accuracy gate catches as a drop.
TARGETS = {"x86": ("QUInt8", "QInt8"), "arm": ("QInt8", "QInt8")}


def check_method(method: str) -> None:
    if method not in METHODS:
        raise unknown("quantize.method", method, METHODS, cutoff=0.3)


def method_order(first: str) -> list[str]:
    """The configured calibration method, then the others (the gate's fallback order)."""
    check_method(first)
    return [first] + [m for m in METHODS if m != first]


def preprocess(src: Path, dst: Path) -> None:
    """onnxruntime's pre-processing (shape inference + graph optimisation) before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def sensitive_nodes(proto) -> list[str]:
    """The layers most sensitive to int8: the first convolution and the classifier."""
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    heads = [n.name for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")]
    return convs[:1] + heads


def _reader(x: np.ndarray, input_name: str, batch: int = 32):
    """Calibration batches, all of one shape: the Entropy and Percentile calibrators stack every batch's
    outputs into one array, so a short last batch breaks them. Up to ``batch - 1`` images are left out."""
    from onnxruntime.quantization import CalibrationDataReader

    usable = len(x) if len(x) <= batch else len(x) // batch * batch

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: x[i:i + batch]} for i in range(0, usable, batch)])

        def get_next(self):
            return next(self.batches, None)
    return Reader()


def static(src: Path, dst: Path, calib: np.ndarray, target: str, method: str, per_channel: bool,
           float_nodes: list[str]) -> None:
    """Static INT8 in QDQ form for ``target``, calibrated on ``calib`` (normalised NCHW float)."""
    from onnxruntime import quantization as q

    act, weight = TARGETS[target]
    with contextlib.redirect_stdout(io.StringIO()):  # the Entropy/Percentile calibrators print progress
        q.quantize_static(str(src), str(dst), _reader(calib, "input"), quant_format=q.QuantFormat.QDQ,
                          per_channel=per_channel, activation_type=getattr(q.QuantType, act),
                          weight_type=getattr(q.QuantType, weight), nodes_to_exclude=list(float_nodes),
                          calibrate_method=getattr(q.CalibrationMethod, method))


def dynamic(src: Path, dst: Path, float_nodes: list[str]) -> None:
    """Dynamic-range INT8: int8 weights, activations quantized on the fly (no calibration)."""
    from onnxruntime import quantization as q

    q.quantize_dynamic(str(src), str(dst), weight_type=q.QuantType.QInt8, nodes_to_exclude=list(float_nodes))


def int8_weights(proto) -> int:
    """How many initializers are stored as 8-bit integers (the proof the file is really quantized)."""
    from onnx import TensorProto

    return sum(t.data_type in (TensorProto.INT8, TensorProto.UINT8) for t in proto.graph.initializer)
