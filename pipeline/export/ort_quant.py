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
# Without VNNI (AVX2, AVX-512 before Cascade Lake) ORT's u8*s8 kernels add pairs of products in int16
# (vpmaddubsw), which saturate: the default student's x86 file lost 0.88 test points on an AVX2 EPYC, and 0.08
# with reduce_range (7-bit weights) at the same latency (0.188 vs 0.185 ms). With VNNI the int32 dot products
# cannot saturate and full-range weights lose nothing (0.04 points on an AMX Xeon), so reduce_range follows the
# CPU that quantizes and measures the file (``reduce_range``); the choice is recorded with the artifact.
TARGETS = {"x86": ("QUInt8", "QInt8"), "arm": ("QInt8", "QInt8")}


def check_method(method: str) -> None:
    if method not in METHODS:
        raise unknown("quantize.method", method, METHODS, cutoff=0.3)


def method_order(first: str) -> list[str]:
    """The configured calibration method, then the others (the gate's fallback order)."""
    check_method(first)
    return [first] + [m for m in METHODS if m != first]


def preprocess(src: Path, dst: Path) -> None:
    """onnxruntime's pre-processing (shape inference + graph optimisation) before quantizing, then the hard
    activations written as ops ONNX Runtime has int8 kernels for (``hard_activations_as_int8_ops``)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    proto = onnx.load(str(dst))
    if hard_activations_as_int8_ops(proto):
        onnx.save(proto, str(dst))


def hard_activations_as_int8_ops(proto) -> int:
    """Rewrite every HardSigmoid(x; alpha, beta) as Clip(x + beta/alpha, 0, 1/alpha) * alpha and every HardSwish
    as x times that, in place; returns how many were rewritten. ONNX Runtime's x86 QDQ fusions have no int8
    HardSigmoid or HardSwish: left as they are (MobileNetV3: 28 of them), each runs in float between a
    dequantize and a quantize, while Add, Clip and Mul by a constant quantize
    (benchmarks/results/int8_transpose.md). The same function in float."""
    from onnx import helper, numpy_helper

    nodes, count = [], 0
    for node in proto.graph.node:
        if node.op_type not in ("HardSigmoid", "HardSwish"):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        alpha, beta = (attrs.get("alpha", 0.2), attrs.get("beta", 0.5)) if node.op_type == "HardSigmoid" \
            else (1 / 6, 0.5)
        base = f"{node.name or node.output[0]}_int8"
        consts = {"shift": beta / alpha, "low": 0.0, "high": 1 / alpha, "scale": alpha}
        proto.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), f"{base}_{k}")
                                       for k, v in consts.items())
        x, out = node.input[0], node.output[0]
        gate = out if node.op_type == "HardSigmoid" else f"{base}_gate"
        nodes += [helper.make_node("Add", [x, f"{base}_shift"], [f"{base}_shifted"], name=f"{base}_add"),
                  helper.make_node("Clip", [f"{base}_shifted", f"{base}_low", f"{base}_high"], [f"{base}_clipped"],
                                   name=f"{base}_clip"),
                  helper.make_node("Mul", [f"{base}_clipped", f"{base}_scale"], [gate], name=f"{base}_mul")]
        if node.op_type == "HardSwish":
            nodes.append(helper.make_node("Mul", [x, gate], [out], name=f"{base}_swish"))
        count += 1
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return count


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


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def reduce_range(target: str) -> bool:
    """7-bit weights for the x86 target on a CPU without VNNI, where full-range u8*s8 sums saturate."""
    if target != "x86":
        return False
    flags = cpu_flags()
    return bool(flags) and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def static(src: Path, dst: Path, calib: np.ndarray, target: str, method: str, per_channel: bool,
           float_nodes: list[str], reduce: bool = False) -> None:
    """Static INT8 in QDQ form for ``target``, calibrated on ``calib`` (normalised NCHW float); ``reduce``:
    weights in 7 bits (ORT's reduce_range)."""
    from onnxruntime import quantization as q

    act, weight = TARGETS[target]
    with contextlib.redirect_stdout(io.StringIO()):  # the Entropy/Percentile calibrators print progress
        q.quantize_static(str(src), str(dst), _reader(calib, "input"), quant_format=q.QuantFormat.QDQ,
                          per_channel=per_channel, activation_type=getattr(q.QuantType, act),
                          weight_type=getattr(q.QuantType, weight), nodes_to_exclude=list(float_nodes),
                          calibrate_method=getattr(q.CalibrationMethod, method), reduce_range=reduce)


def dynamic(src: Path, dst: Path, float_nodes: list[str]) -> None:
    """Dynamic-range INT8: int8 weights, activations quantized on the fly (no calibration)."""
    from onnxruntime import quantization as q

    q.quantize_dynamic(str(src), str(dst), weight_type=q.QuantType.QInt8, nodes_to_exclude=list(float_nodes))


def int8_weights(proto) -> int:
    """How many initializers are stored as 8-bit integers (the proof the file is really quantized)."""
    from onnx import TensorProto

    return sum(t.data_type in (TensorProto.INT8, TensorProto.UINT8) for t in proto.graph.initializer)
