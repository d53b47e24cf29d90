"""Which ONNX Runtime static-quantization options make an int8 file faster than its fp32 model, latency only.

    .venv/bin/python benchmarks/ort_int8_options.py runs/photos/simplify/onnx_simplified.onnx [--runs 400]

Quantizes the given fp32 ONNX file (after ONNX Runtime's pre-processing, as the quantize stage does) with each
option set below and prints the int8 file's median batch-1, one-thread latency against the fp32 file's, timed in
interleaved rounds (int8_speed.py's timer) so the ratio holds on a busy machine. Calibration uses random images:
this measures speed only; the quantize stage's gate decides accuracy. The first row is what the stage writes for the x86
target (uint8 activations, int8 per-channel weights, QDQ).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from int8_speed import interleaved, onnx_runner  # noqa: E402  (sets one thread for every runtime)

from pipeline.export import ort_quant  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--runs", type=int, default=400)
    args = parser.parse_args()
    if not args.model.is_file():
        parser.error(f"{args.model} is not a file: give an fp32 .onnx, e.g. runs/<run>/simplify/onnx_simplified.onnx")
    import onnx
    from onnxruntime import quantization as q

    tmp = Path(tempfile.mkdtemp(prefix="ort-int8-"))
    pre = tmp / "pre.onnx"
    ort_quant.preprocess(args.model, pre)
    proto = onnx.load(pre)
    shape = [d.dim_value or 1 for d in proto.graph.input[0].type.tensor_type.shape.dim]
    calib = np.random.default_rng(0).standard_normal((64, *shape[1:])).astype(np.float32)
    depthwise = [n.name for n in proto.graph.node
                 if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    u8, s8 = q.QuantType.QUInt8, q.QuantType.QInt8
    variants = {  # name -> quantize_static options
        "u8 activations, s8 per-channel weights, QDQ (the stage's x86 file)": dict(per_channel=True),
        "per-tensor weights": dict(per_channel=False),
        "QOperator form (QLinearConv) instead of QDQ": dict(per_channel=True, quant_format=q.QuantFormat.QOperator),
        f"depthwise convolutions ({len(depthwise)}) kept in float": dict(per_channel=True, nodes_to_exclude=depthwise),
        "u8 weights": dict(per_channel=True, weight_type=u8),
        "s8 activations (the ARM target's types)": dict(per_channel=True, activation_type=s8),
    }
    fp32, _ = onnx_runner(str(args.model), calib)
    print(f"model: {args.model}; batch 1, one thread, median of {args.runs} calls, int8 and fp32 interleaved\n")
    print("| option | int8 ms | fp32 ms | int8 / fp32 |\n|---|---|---|---|")
    for i, (name, kw) in enumerate(variants.items()):
        dst = tmp / f"v{i}.onnx"
        options = {"quant_format": q.QuantFormat.QDQ, "activation_type": u8, "weight_type": s8, **kw}
        q.quantize_static(str(pre), str(dst), ort_quant._reader(calib, proto.graph.input[0].name, 8), **options)
        ms = interleaved({"int8": onnx_runner(str(dst), calib)[0], "fp32": fp32}, args.runs)
        int8_ms, fp32_ms = ms["int8"]["median_ms"], ms["fp32"]["median_ms"]
        print(f"| {name} | {int8_ms:.3f} | {fp32_ms:.3f} | {int8_ms / fp32_ms:.2f}x |", flush=True)

if __name__ == "__main__":
    main()
