"""How much of an int8 model file really runs in int8: an audit of a TFLite file (XNNPACK partitions, ops left on
TFLite's builtin kernels) and of an ONNX file as ONNX Runtime's CPU provider optimizes it (Q/DQ and Transpose nodes
left, ops still computing in float between int8 ones, share of the MACs in integer kernels).

Why: a file can be "int8" (int8 weights, QDQ pairs) and still run mostly in float, or be split into many XNNPACK
partitions by one unsupported op, and then be slower than fp32 (benchmarks/results/int8_speed.md). These
functions say which case a file is in, from the file alone.

Imports only numpy, onnx, onnxruntime and ai_edge_litert, each inside the function that needs it.
"""
from __future__ import annotations

from pipeline.export.onnx_audit import DYNAMIC_RANGE_OPS, onnx_audit

# ---- TFLite ---------------------------------------------------------------------------------------------------

_QUANT_TYPES = ("int8", "uint8", "int16", "int4")


def _dtype_name(dtype) -> str:
    import numpy as np

    return np.dtype(dtype).name


def _op_signature(op: dict) -> str:
    """'int8->int8': the type of the op's first input and of its first output."""
    ins = [_dtype_name(t) for t in op.get("operand_types", [])]
    outs = [_dtype_name(t) for t in op.get("result_types", [])]
    return f"{ins[0] if ins else '-'}->{outs[0] if outs else '-'}"


def _is_int8_op(op: dict) -> bool:
    """An op computing on quantized data: its first input or its first output is an integer-quantized type
    (QUANTIZE float->int8 and DEQUANTIZE int8->float count, they are the boundary ops)."""
    a, b = _op_signature(op).split("->")
    return a in _QUANT_TYPES or b in _QUANT_TYPES


def tflite_audit(path, num_threads: int = 1) -> dict:
    """The ops of a TFLite file and what XNNPACK (ai_edge_litert's default delegate) takes of them.

    Returns ``ops`` (name -> {count, types: {"in->out": count}}), ``tensor_types`` (dtype -> count of tensors),
    ``partitions`` (DELEGATE nodes after ``allocate_tensors`` with the default delegate: one is what a fully
    delegated file looks like), ``outside`` (name -> count of ops left on TFLite's builtin kernels),
    ``outside_int8`` (the same, only ops on quantized tensors), ``int8_file`` (int8 conv/fc weights present).

    The interpreter lists every original node plus one DELEGATE node per partition; a node belongs to a partition
    when it lies between the partition's input and output tensors (walked back from its outputs).
    """
    from collections import Counter

    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=num_threads)
    interp.allocate_tensors()
    nodes = interp._get_ops_details()
    original = [n for n in nodes if n["op_name"] != "DELEGATE"]
    delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]

    ops: dict = {}
    for op in original:
        entry = ops.setdefault(op["op_name"], {"count": 0, "types": Counter()})
        entry["count"] += 1
        entry["types"][_op_signature(op)] += 1
    ops = {k: {"count": v["count"], "types": dict(v["types"])} for k, v in sorted(ops.items())}
    tensor_types = Counter(_dtype_name(t["dtype"]) for t in interp.get_tensor_details())

    producer = {int(t): n["index"] for n in original for t in n["outputs"] if t >= 0}
    by_index = {n["index"]: n for n in original}
    delegated: set[int] = set()
    for d in delegates:
        stop = {int(t) for t in d["inputs"]}
        todo, seen = [int(t) for t in d["outputs"]], set()
        while todo:
            t = todo.pop()
            if t in seen or t in stop:
                continue
            seen.add(t)
            p = producer.get(t)
            if p is None or p in delegated:
                continue
            delegated.add(p)
            todo.extend(int(i) for i in by_index[p]["inputs"] if i >= 0)
    left = [n for n in original if n["index"] not in delegated]
    outside = dict(Counter(n["op_name"] for n in left).most_common())
    outside_int8 = dict(Counter(n["op_name"] for n in left if _is_int8_op(n)).most_common())
    int8_file = any(_is_int8_op(n) for n in original if n["op_name"] in
                    ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL"))
    return {"format": "tflite", "path": str(path), "nodes": len(original), "ops": ops,
            "tensor_types": dict(tensor_types.most_common()), "partitions": len(delegates),
            "delegated_nodes": len(delegated), "outside": outside, "outside_int8": outside_int8,
            "int8_file": int8_file}



# ---- one line -------------------------------------------------------------------------------------------------

def _top(counts: dict, n: int = 3) -> str:
    items = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    more = len(counts) - len(items)
    return ", ".join(f"{c} {k}" for k, c in items) + (f" (+{more} kinds)" if more > 0 else "")


KEEP = ("format", "nodes", "partitions", "delegated_nodes", "outside", "outside_int8", "int8_file", "quantize",
        "dequantize", "transpose", "float_ops", "int8_kernels", "int8_mac_share")


def audit(path) -> dict:
    """The audit of a .tflite or .onnx file as results.json keeps it: the counts, without the op table, and its
    one-line ``summary`` as ``line``."""
    from pathlib import Path

    full = tflite_audit(path) if Path(path).suffix == ".tflite" else onnx_audit(path)
    return {**{k: full[k] for k in KEEP if k in full}, "line": summary(full)}


def inspect(path) -> list[str]:
    """``compress inspect``: the summary, then one line per op type with its count and tensor types."""
    from pathlib import Path

    from pipeline.errors import UserError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a .tflite or .onnx model file in it")
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a .tflite or .onnx model file")
    suffix = path.suffix.lower()  # MODEL.ONNX too
    if suffix not in (".tflite", ".onnx"):
        raise UserError(f"{path} is not a .tflite or .onnx file; give a model file the quantize stage wrote")
    try:
        full = tflite_audit(path) if suffix == ".tflite" else onnx_audit(path)
    except ImportError as exc:  # the runtime is missing, not the file damaged
        module = exc.name or ("ai_edge_litert" if suffix == ".tflite" else "onnxruntime")
        package = module.partition(".")[0].replace("_", "-")
        raise UserError(f"{path} cannot be inspected: {package} is not installed; pip install {package}") from exc
    except Exception as exc:  # noqa: BLE001 - the runtimes raise many types for a damaged file
        raise UserError(f"{path} cannot be loaded by its runtime ({type(exc).__name__}); is it damaged? "
                        "rerun 'compress all' to rebuild it") from exc
    out = [f"{path}: {summary(full)}"]
    if full["format"] == "tflite":
        for name, op in full["ops"].items():
            types = ", ".join(f"{n} {t}" for t, n in op["types"].items())
            outside = full["outside"].get(name, 0)
            note = f"  ({outside} outside XNNPACK)" if outside else ""
            out.append(f"  {name:<24} {op['count']:>4}  {types}{note}")
    else:
        out += [f"  {name:<24} {count:>4}" for name, count in full["ops"].items()]
    return out


def dynamic_range(audit: dict) -> bool:
    """An ONNX file quantized with dynamic ranges: its activations are quantized at run time, call by call, and
    its convolutions run as ConvInteger (ORT fuses the classifier's into DynamicQuantizeMatMul)."""
    return bool(DYNAMIC_RANGE_OPS & set(audit.get("int8_kernels") or {}))


def summary(audit: dict) -> str:
    """One line: 'int8 kernels 100% of MACs, 1 partition', '19 HARD_SWISH outside XNNPACK: 20 partitions', ..."""
    if audit.get("format") == "tflite":
        parts = audit["partitions"]
        plural = "partition" if parts == 1 else "partitions"
        outside = {k: v for k, v in audit["outside"].items()}
        if not outside:
            return f"all {audit['nodes']} ops in XNNPACK: {parts} {plural}"
        where = "outside XNNPACK" + (f" ({sum(audit['outside_int8'].values())} int8 on builtin kernels)"
                                     if audit.get("outside_int8") else "")
        return f"{_top(outside)} {where}: {parts} {plural}"
    share = audit.get("int8_mac_share")
    head = "no conv/gemm MACs found" if share is None else f"int8 kernels {share:.0%} of MACs"
    if dynamic_range(audit):
        head = f"dynamic-range {head}"
    extras = [f"{audit['quantize']} Q / {audit['dequantize']} DQ"]
    if audit["transpose"]:
        extras.append(f"{audit['transpose']} Transpose")
    if audit["float_ops"]:
        extras.append(f"float: {_top(audit['float_ops'])}")
    return f"{head}; " + "; ".join(extras)
