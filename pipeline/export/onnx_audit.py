"""What an ONNX file runs in int8 under ONNX Runtime: the graph its CPU provider optimizes the file into (written
out with SessionOptions.optimized_model_filepath), with the quantize/dequantize and Transpose nodes left, the ops
still computing in float between integer ones, and the share of MACs in integer kernels. Imports onnx, numpy and
onnxruntime inside the functions; pipeline/export/int8_audit.py is the entry point."""
from __future__ import annotations

# integer kernels that carry MACs (input index of their weight) and other integer kernels
_INT8_MAC_OPS = {"QLinearConv": 3, "NhwcQLinearConv": 3, "ConvInteger": 1, "QLinearMatMul": 3,
                 "MatMulInteger": 1, "MatMulIntegerToFloat": 1, "DynamicQuantizeMatMul": 1, "QGemm": 3,
                 "QAttention": 1, "DynamicQuantizeLSTM": 1}
_FLOAT_MAC_OPS = {"Conv": 1, "FusedConv": 1, "NhwcFusedConv": 1, "Gemm": 1, "FusedGemm": 1, "MatMul": 1,
                  "FusedMatMul": 1, "ConvTranspose": 1}


_QDQ = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
# the integer ops a dynamic-range file holds before ORT optimizes it (weight at input 1): their MACs count too;
# ORT fuses the classifier's into DynamicQuantizeMatMul, so that op marks such a file after optimization as well
_DYNAMIC_MAC_OPS = ("ConvInteger", "MatMulInteger")
DYNAMIC_RANGE_OPS = {*_DYNAMIC_MAC_OPS, "DynamicQuantizeMatMul"}


_SHAPE_OPS = {"Shape", "Size", "ConstantOfShape", "Constant"}


_INT_TYPES = ("uint8", "int8", "uint16", "int16")


def _macs_per_weight(proto) -> dict:
    """MACs of one sample for each conv / gemm / matmul of an (unoptimized) model, keyed by the name of the
    initializer holding its weight; in a QDQ model also by the quantized initializer feeding the weight's
    DequantizeLinear, since that is the name ORT's integer kernels keep, and by the node's name (ORT quantizes a
    float-weight conv between DequantizeLinear and QuantizeLinear itself, naming the weight '<node>_weight_q');
    and the total of the model."""
    import numpy as np
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - shapes are best effort
        inferred = proto
    dims = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        shape = vi.type.tensor_type.shape
        dims[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
    inits = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    dq_source = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    macs, total = {}, 0
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose", *_DYNAMIC_MAC_OPS) or len(node.input) < 2:
            continue
        weight = node.input[1]
        source = dq_source.get(weight, weight)
        wshape = inits.get(source) or inits.get(weight)
        out = dims.get(node.output[0])
        if wshape is None or not out or any(d is None for d in out[1:]):
            continue
        per_weight = int(np.prod(wshape))
        if node.op_type in ("Conv", "ConvTranspose", "ConvInteger"):
            spatial = int(np.prod(out[2:])) if len(out) > 2 else 1
        else:  # rows of the product per sample: everything between the batch and the last axis
            spatial = int(np.prod(out[1:-1])) if len(out) > 2 else 1
        n = per_weight * spatial
        total += n
        for key in {weight, source, node.name}:
            macs[key] = n
    return macs, total


def _tensor_types(graph) -> dict:
    """Element type per tensor of an ORT-optimized graph ('float', 'int8', 'uint8', ...), propagated from the
    inputs and initializers: integer kernels and QuantizeLinear give their zero point's type, DequantizeLinear
    float, every other op the type of its first typed input (QLinearConcat's first inputs are its output scale
    and zero point, hence 'first integer input' for the QLinear family)."""
    from onnx import helper

    def name(elem):
        return helper.tensor_dtype_to_np_dtype(elem).name if elem else "float32"

    types = {t.name: name(t.data_type) for t in graph.initializer}
    for vi in graph.input:
        types[vi.name] = name(vi.type.tensor_type.elem_type)
    for _ in range(3):  # the saved graph is topologically sorted; extra passes only for safety
        for node in graph.node:
            op = node.op_type
            if op == "DequantizeLinear" or op in ("MatMulIntegerToFloat", "DynamicQuantizeMatMul"):
                out = "float32"
            elif op == "QuantizeLinear":
                zp = node.input[2] if len(node.input) > 2 else ""
                out = types.get(zp, "uint8")
            elif op.startswith("QLinear") or "QLinear" in op or op == "QGemm":
                # integer in, integer out, of the type of their first integer input (X or a zero point); QGemm
                # without an output zero point (input 8) gives float
                ints = [types[i] for i in node.input if types.get(i) in _INT_TYPES]
                out = ints[0] if ints else "uint8"
                if op == "QGemm" and (len(node.input) < 9 or not node.input[8]):
                    out = "float32"
            elif op in ("ConvInteger", "MatMulInteger"):
                out = "int32"
            elif op in ("Shape", "Size"):
                out = "int64"
            elif op == "Cast":  # the dynamic-range file casts its int32 accumulators back to float
                to = next((a.i for a in node.attribute if a.name == "to"), 0)
                out = name(to)
            else:
                out = next((types[i] for i in node.input if i and i in types), None)
                if out is None:
                    continue
            for o in node.output:
                if o:
                    types[o] = out
    return types


def onnx_audit(path, level: str = "all") -> dict:
    """What ONNX Runtime's CPU provider runs for the model at ``path``.

    The model is loaded once with ``SessionOptions.optimized_model_filepath`` pointing at a temporary file and
    ``graph_optimization_level`` ORT_ENABLE_ALL (``level='all'``, the default a session runs with) or
    ORT_ENABLE_EXTENDED (``'extended'``); that optimized graph is what is counted: ``ops`` (op type -> count),
    ``quantize`` / ``dequantize`` / ``transpose`` nodes, ``int8_kernels`` (integer op types -> count),
    ``float_ops`` (op type -> count of ops whose input is float, Q/DQ and shape ops left out: what still computes
    in float), ``float_convs`` and the MACs (one sample, from the unoptimized model's shapes) in integer kernels
    against float Conv/Gemm/MatMul: ``int8_mac_share`` (0..1, None when no MAC op was found).
    """
    import os
    import tempfile
    from collections import Counter

    import onnx
    import onnxruntime as ort

    original = onnx.load(str(path))
    macs, total_macs = _macs_per_weight(original)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    fd, tmp = tempfile.mkstemp(suffix=".onnx")
    os.close(fd)
    try:
        opts.optimized_model_filepath = tmp
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(tmp)
    finally:
        for leftover in (tmp, tmp + ".data"):
            if os.path.exists(leftover):
                os.unlink(leftover)

    graph = optimized.graph
    ops = Counter(n.op_type for n in graph.node)
    types = _tensor_types(graph)
    int8_kernels = Counter(n.op_type for n in graph.node if n.op_type in _INT8_MAC_OPS or "QLinear" in n.op_type
                           and (n.op_type.startswith("QLinear") or n.op_type.startswith("Nhwc")))
    float_ops = Counter()
    for n in graph.node:
        if n.op_type in _QDQ or n.op_type in _SHAPE_OPS or n.op_type in int8_kernels:
            continue
        first = next((i for i in n.input if i), None)
        if first is not None and types.get(first, "float32").startswith("float"):
            float_ops[n.op_type] += 1

    # integer kernels keep the quantized weight's name, so their MACs are looked up by it; float convs may have
    # reordered, renamed weights (the NCHWc layout transformer), so float MACs are the rest of the model's total
    int8_macs = 0
    unmatched = Counter()
    for n in graph.node:
        if n.op_type not in _INT8_MAC_OPS:
            continue
        idx = _INT8_MAC_OPS[n.op_type]
        weight = n.input[idx] if len(n.input) > idx else ""
        m = macs.get(weight)
        if m is None:  # a weight ORT quantized itself: '<original node name>_weight_q'
            m = next((v for k, v in macs.items() if k and weight.startswith(k + "_")), None)
        if m is None:
            unmatched[n.op_type] += 1  # counted as float below: the share errs low, never high
            continue
        int8_macs += m
    total = max(total_macs, int8_macs)
    float_macs = total - int8_macs
    float_convs = sum(c for op, c in ops.items() if op in _FLOAT_MAC_OPS)
    return {"format": "onnx", "path": str(path), "level": level, "nodes": len(graph.node),
            "ops": dict(ops.most_common()),
            "quantize": ops.get("QuantizeLinear", 0) + ops.get("DynamicQuantizeLinear", 0),
            "dequantize": ops.get("DequantizeLinear", 0), "transpose": ops.get("Transpose", 0),
            "int8_kernels": dict(int8_kernels.most_common()), "float_ops": dict(float_ops.most_common()),
            "float_convs": float_convs, "int8_macs": int8_macs, "float_macs": float_macs,
            "int8_mac_share": (int8_macs / total) if total else None, "unmatched_mac_ops": dict(unmatched)}
