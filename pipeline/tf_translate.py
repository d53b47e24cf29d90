"""ONNX -> TensorFlow (NHWC) -> TFLite fp32 / fp16 / full-integer int8, run as its own process:
``python -m pipeline.tf_translate job.json`` (see pipeline/tflite_tools.py, which writes the job).

Why a translator of our own instead of onnx2tf: onnx2tf takes ~17 s a model, its plain install
downgrades numpy/onnx/onnxruntime, and for static 3-channel inputs it tries to download calibration
data (TOOLCHAIN.md). Our students come from a small registry, so the simplified graphs hold only
Conv (incl. depthwise), BatchNormalization, Relu, Clip, Add, GlobalAveragePool, Flatten, Gemm (and
Identity/Constant); translating exactly those to NHWC TensorFlow ops and handing the function to
tf.lite.TFLiteConverter (0.6 s for int8 with a representative dataset) is short, offline and exact.
Any other op is a one-line error naming it. TensorFlow runs in a subprocess because importing it next
to triton-using torch code segfaults, and a converter crash must not take the pipeline down.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

SUPPORTED = ("Add", "BatchNormalization", "Clip", "Constant", "Conv", "Flatten", "Gemm", "GlobalAveragePool",
             "Identity", "Relu")


class Unsupported(Exception):
    """The graph holds an op the translator does not know."""


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _padding(x, pads, kernel, strides):
    """'SAME' when ONNX's explicit pads equal TF's SAME padding for this input, else pad, then 'VALID'."""
    import tensorflow as tf

    (pt, pl, pb, pr), same = pads, True
    for dim, (k, s, lo, hi) in enumerate(zip(kernel, strides, (pt, pl), (pb, pr))):
        size = int(x.shape[1 + dim])
        total = max((-(-size // s) - 1) * s + k - size, 0)
        same &= (lo, hi) == (total // 2, total - total // 2)
    if same and any(pads):
        return x, "SAME"
    if any(pads):
        x = tf.pad(x, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
    return x, "VALID"


def _conv(node, ins, a):
    import tensorflow as tf

    x, w = ins[0], ins[1]
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        raise Unsupported(f"Conv '{node.name}' with dilations {a['dilations']}")
    kernel, strides = list(w.shape[2:]), list(a.get("strides", [1, 1]))
    x, padding = _padding(x, list(a.get("pads", [0, 0, 0, 0])), kernel, strides)
    group, cin = a.get("group", 1), int(x.shape[-1])
    if group == 1:
        y = tf.nn.conv2d(x, np.transpose(w, (2, 3, 1, 0)), [1, *strides, 1], padding)
    elif group == cin and w.shape[0] == cin:  # depthwise: (C, 1, kh, kw) -> (kh, kw, C, 1)
        y = tf.nn.depthwise_conv2d(x, np.transpose(w, (2, 3, 0, 1)), [1, *strides, 1], padding)
    else:
        raise Unsupported(f"grouped Conv '{node.name}' (group {group} of {cin} channels)")
    return y + ins[2] if len(ins) > 2 else y


def _batchnorm(node, ins, a):
    scale, bias, mean, var = ins[1:5]
    mul = scale / np.sqrt(var + a.get("epsilon", 1e-5))
    return ins[0] * mul.astype(np.float32) + (bias - mean * mul).astype(np.float32)


def _clip(node, ins, a):
    import tensorflow as tf

    low = float(ins[1]) if len(ins) > 1 and ins[1] is not None else a.get("min", -np.inf)
    high = float(ins[2]) if len(ins) > 2 and ins[2] is not None else a.get("max", np.inf)
    if (low, high) == (0.0, 6.0):
        return tf.nn.relu6(ins[0])
    return tf.clip_by_value(ins[0], low, high)


def _flatten(node, ins, a):
    import tensorflow as tf

    x = ins[0]
    if a.get("axis", 1) != 1:
        raise Unsupported(f"Flatten '{node.name}' with axis {a['axis']}")
    if len(x.shape) == 4 and (x.shape[1] != 1 or x.shape[2] != 1):
        x = tf.transpose(x, [0, 3, 1, 2])  # ONNX flattens in NCHW order
    return tf.reshape(x, [-1, int(np.prod(x.shape[1:]))])


def _gemm(node, ins, a):
    import tensorflow as tf

    if a.get("transA", 0):
        raise Unsupported(f"Gemm '{node.name}' with transA")
    w = ins[1].T if a.get("transB", 0) else ins[1]
    y = tf.matmul(ins[0], (a.get("alpha", 1.0) * w).astype(np.float32))
    return y + (a.get("beta", 1.0) * ins[2]).astype(np.float32) if len(ins) > 2 else y


def _ops() -> dict:
    import tensorflow as tf

    return {"Conv": _conv, "BatchNormalization": _batchnorm, "Clip": _clip, "Flatten": _flatten, "Gemm": _gemm,
            "Relu": lambda n, i, a: tf.nn.relu(i[0]), "Add": lambda n, i, a: i[0] + i[1],
            "Identity": lambda n, i, a: i[0],
            "GlobalAveragePool": lambda n, i, a: tf.reduce_mean(i[0], [1, 2], keepdims=True)}


def check_ops(proto) -> None:
    unknown = sorted({n.op_type for n in proto.graph.node} - set(SUPPORTED))
    if unknown:
        raise Unsupported(f"operator(s) {', '.join(unknown)} (the TFLite translator handles {', '.join(SUPPORTED)})")


def graph_function(proto):
    """A Python function NHWC float tensor -> logits that replays the ONNX graph with TF ops."""
    from onnx import numpy_helper

    check_ops(proto)
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
    ops = _ops()

    def fn(x):
        env = {proto.graph.input[0].name: x, **consts}
        for node in proto.graph.node:
            if node.op_type != "Constant":
                env[node.output[0]] = ops[node.op_type](node, [env.get(i) if i else None for i in node.input],
                                                        _attrs(node))
        return env[proto.graph.output[0].name]
    return fn


def _converter(proto, size_hwc, precision: str, calib: np.ndarray | None):
    import tensorflow as tf

    fn = graph_function(proto)
    spec = tf.TensorSpec([None, *size_hwc], tf.float32, name="input")
    concrete = tf.function(lambda x: {"logits": fn(x)}, input_signature=[spec]).get_concrete_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    if precision == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv


def quant_params(model_bytes: bytes) -> dict:
    """Input/output dtype and (scale, zero point) as the interpreter reports them."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes)
    out = {}
    for key, det in (("input", interp.get_input_details()[0]), ("output", interp.get_output_details()[0])):
        scale, zero = det["quantization"]
        out[key] = {"dtype": np.dtype(det["dtype"]).name, "scale": float(scale), "zero_point": int(zero)}
    return out


def with_metadata(model_bytes: bytes, meta: dict) -> bytes:
    """Add ``meta`` as a JSON string in the flatbuffer's metadata list under the name 'compress'."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = "compress", len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def convert_one(proto, job: dict, precision: str, calib) -> dict:
    c, h, w = job["metadata"]["input_size"]
    started = time.perf_counter()
    raw = _converter(proto, (h, w, c), precision, calib).convert()
    params = quant_params(raw)
    meta = {**job["metadata"], "format": f"tflite_{precision}", "layout": "NHWC", "input_size": [h, w, c],
            "quantization": params}
    path = Path(job["outputs"][precision])
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(with_metadata(raw, meta))
    tmp.replace(path)
    return {"status": "ok", "convert_seconds": round(time.perf_counter() - started, 2), **params}


def convert_job(job: dict) -> dict:
    """Every precision of one job; a failure is recorded per precision, never raised."""
    import onnx

    try:
        proto = onnx.load(job["onnx"])
        check_ops(proto)
    except Unsupported as exc:
        return {p: {"status": "failed", "reason": f"cannot convert to TFLite: {exc}"} for p in job["outputs"]}
    calib = np.load(job["calibration"]).transpose(0, 2, 3, 1).copy() if job.get("calibration") else None
    results = {}
    for precision in job["outputs"]:
        try:
            results[precision] = convert_one(proto, job, precision, calib)
        except Exception as exc:  # one failed precision must not stop the others
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            results[precision] = {"status": "failed",
                                  "reason": f"TFLiteConverter failed for {precision}: {type(exc).__name__}: {first}"}
    return results


def main(jobs_path: str) -> None:
    """Run a list of jobs (one TensorFlow start-up for all of them) and write their results."""
    spec = json.loads(Path(jobs_path).read_text())
    results = [convert_job(job) for job in spec["jobs"]]
    Path(spec["result"]).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
