"""PyTorch -> TFLite fp32 / fp16 / full-integer int8 with litert-torch, run as its own process:
``python -m pipeline.export.litert_convert jobs.json`` (pipeline/export/tflite_tools.py writes the jobs and reads
the results).

Why litert-torch: it is Google's maintained converter and takes every registered net (our CIFAR nets and
torchvision's MobileNets, EfficientNet, ShuffleNets, ResNets) straight from PyTorch, so there is no ONNX ->
TensorFlow translation of our own to keep up with new operators, and no TensorFlow dependency.

Why a subprocess still: the conversion runs MLIR / flatbuffer C++ code, and an abort or segfault there must fail
only the TFLite artifacts, not the quantize stage; one conversion also peaks at ~1.6 GB, which goes back to
the system when the process ends, and jax/litert imports (several seconds) stay out of the pipeline process.
One process converts every precision of every job it is given.

Calls: fp32 is ``litert_torch.convert``; fp16 weights use litert-torch's
``full_fp16_recipe`` as quant_config; int8 is PT2E: symmetric per-channel static quantizer, ``prepare_pt2e``
on a strict ``torch.export`` (strict export leaves residual adds quantizable), calibration on the
representative images, ``convert_pt2e``, then ``convert`` with that quantizer, which gives int8 input and output
tensors whose scale and zero point we record. The model is wrapped to take NHWC input (what TFLite runtimes
and our deploy runner feed); the batch dimension is 1, the batch size of on-device inference.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

METADATA_NAME = "compress"


def _nhwc(model, shape_chw):
    import litert_torch
    import torch

    c, h, w = shape_chw
    wrapped = litert_torch.to_channel_last_io(model.eval(), args=[0]).eval()
    return wrapped, (torch.zeros(1, h, w, c),)


def _fp32(model, args, calib):
    import litert_torch

    return litert_torch.convert(model, args)


def _fp16(model, args, calib):
    import litert_torch
    from litert_torch.generative.quantize import quant_recipes

    return litert_torch.convert(model, args, quant_config=quant_recipes.full_fp16_recipe())


def _hard_activations_as_int8_ops(model):
    """A copy of ``model`` with every nn.Hardswish and nn.Hardsigmoid written as x * relu6(x + 3) * (1/6) and
    relu6(x + 3) * (1/6), with the constants shaped like x (1, 1, 1, 1 on feature maps).

    Why: XNNPACK takes HARD_SWISH only in float, so in an int8 file each one falls back to TFLite's builtin
    kernel and splits the graph (MobileNetV3-Small: 20 partitions, int8 1.9x slower than fp32). Written with
    ADD, RELU6 and MUL it stays in int8 XNNPACK kernels; the constants must have x's rank, because litert-torch's
    quantizer turns a Python scalar into a 0-d tensor and its NHWC layout pass then leaves the op in NCHW between
    two TRANSPOSEs; a multiplication by 1/6 is quantized where a division by 6 is not
    (benchmarks/results/int8_transpose.md). The same arithmetic, so the float function is unchanged."""
    import copy

    import torch
    from torch import nn
    from torch.nn import functional as F

    class HardSwish(nn.Module):
        def forward(self, x):
            shape = (1,) * x.dim()
            return x * F.relu6(x + torch.full(shape, 3.0)) * torch.full(shape, 1 / 6)

    class HardSigmoid(nn.Module):
        def forward(self, x):
            shape = (1,) * x.dim()
            return F.relu6(x + torch.full(shape, 3.0)) * torch.full(shape, 1 / 6)

    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, (nn.Hardswish, nn.Hardsigmoid)):
                new = HardSwish() if isinstance(child, nn.Hardswish) else HardSigmoid()
                setattr(module, name, new.train(child.training))
    return model


def _zeros_around(graph, x, pad_h: int, pad_w: int):
    """Nodes giving ``x`` (N, C, H, W) with ``pad_h`` rows and ``pad_w`` columns of zeros on each side, written as
    two concatenations with zero blocks (their shapes are static: the export is of batch 1 at one size)."""
    import torch

    aten, g, val = torch.ops.aten, graph.graph, x.meta["val"]
    n, c, h, w = val.shape

    def zeros(shape):
        node = g.call_function(aten.full.default, (list(shape), 0.0),
                               {"dtype": val.dtype, "device": val.device, "pin_memory": False})
        node.meta["val"] = val.new_zeros(shape)
        return node

    def cat(parts, dim):
        node = g.call_function(aten.cat.default, (parts, dim))
        node.meta["val"] = aten.cat.default([p.meta["val"] for p in parts], dim)
        return node

    if pad_w:
        side = zeros((n, c, h, pad_w))
        x = cat([side, x, side], 3)
    if pad_h:
        side = zeros((n, c, pad_h, w + 2 * pad_w))
        x = cat([side, x, side], 2)
    return x


def _max_pool_padding_as_zero_pad(graph) -> int:
    """Rewrite, in an exported graph, every max-pool with padding whose input is a ReLU output as the same max-pool
    without padding on the input framed with zeros; returns how many were rewritten.

    Why: litert-torch lowers a padded max-pool as PADV2 with the dtype's minimum (-128), then MAX_POOL_2D, and
    XNNPACK does not take that int8 PADV2, so ResNets and ShuffleNets (MaxPool2d(3, 2, padding=1) after the stem)
    run it on TFLite's builtin kernel in an int8 file of 2 XNNPACK partitions. Where the input is a ReLU output
    (>= 0), padding with 0 gives the same maximum as padding with -inf: every window holds at least one real value
    >= 0, so the function is unchanged; elsewhere (and with ceil_mode, whose output size depends on the padding)
    nothing is touched. Done on the exported aten graph, before PT2E, so nn.ReLU and F.relu count alike.

    Why zero blocks and concatenations (measured on resnet18 int8, 64 px): a zero ``constant_pad_nd`` becomes a PAD
    that XNNPACK takes (1 partition), but litert-torch's NHWC layout pass has no rule for it, so it runs in NCHW
    between two TRANSPOSEs; ``replication_pad2d`` (exact for any input) becomes MIRROR_PAD, which XNNPACK does not
    take (2 partitions). Two CONCATENATIONs stay NHWC and in XNNPACK: 1 partition and no TRANSPOSE, plus one int8
    requantization (the histogram observer gives the framed map its own scale); latency as before or lower."""
    import torch

    aten = torch.ops.aten
    pools = (aten.max_pool2d.default, aten.max_pool2d_with_indices.default)
    nonnegative = (aten.relu.default, aten.relu_.default)
    rewritten = 0
    for node in list(graph.graph.nodes):
        # (input, kernel_size, stride, padding, dilation, ceil_mode); fewer args: padding 0, nothing to do
        if node.op != "call_function" or node.target not in pools or node.kwargs or len(node.args) < 4:
            continue
        x, kernel, stride, padding = node.args[:4]
        ceil_mode = len(node.args) > 5 and node.args[5]
        pad_h, pad_w = (list(padding) * 2)[:2] if isinstance(padding, (list, tuple)) else (padding, padding)
        if not (pad_h or pad_w) or ceil_mode or getattr(x, "target", None) not in nonnegative:
            continue
        with graph.graph.inserting_before(node):
            framed = _zeros_around(graph, x, pad_h, pad_w)
        node.args = (framed, kernel, stride, [0, 0], *node.args[4:])
        rewritten += 1
    if rewritten:
        graph.graph.lint()
        graph.recompile()
    return rewritten


def _int8(model, args, calib):
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    model = _hard_activations_as_int8_ops(model)
    try:
        graph = torch.export.export(model, args, strict=True).module()
    except Exception:  # strict export refuses some Python constructs; non-strict only leaves adds in float
        graph = torch.export.export(model, args).module()
    _max_pool_padding_as_zero_pad(graph)
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for image in calib:
            prepared(torch.from_numpy(image[None]))
    converted = convert_pt2e(prepared, fold_quantize=False)
    return litert_torch.convert(converted, args, quant_config=QuantConfig(pt2e_quantizer=quantizer))


CONVERTERS = {"fp32": _fp32, "fp16": _fp16, "int8": _int8}


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
    """Add ``meta`` as a JSON string in the flatbuffer's metadata list under the name 'compress'
    (the schema and object API that ai_edge_litert ships, so no TensorFlow is needed)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model_bytes, 0))
    for buf in model.buffers or []:
        # litert writes some constants after the flatbuffer, addressed by offset; repacking would drop
        # that tail, so those move inside (fine below the flatbuffer's 2 GB limit)
        if buf.offset > 1:
            buf.data = np.frombuffer(model_bytes[buf.offset:buf.offset + buf.size], np.uint8)
            buf.offset = buf.size = 0
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def convert_one(model, job: dict, precision: str, calib) -> dict:
    c, h, w = job["metadata"]["input_size"]
    started = time.perf_counter()
    wrapped, args = _nhwc(model, (c, h, w))
    path = Path(job["outputs"][precision])
    tmp = path.with_name(f".{path.name}.tmp")
    CONVERTERS[precision](wrapped, args, calib).export(str(tmp))
    raw = tmp.read_bytes()
    params = quant_params(raw)
    meta = {**job["metadata"], "format": f"tflite_{precision}", "layout": "NHWC", "input_size": [h, w, c],
            "quantization": params, "converter": "litert-torch"}
    tmp.write_bytes(with_metadata(raw, meta))
    tmp.replace(path)
    return {"status": "ok", "convert_seconds": round(time.perf_counter() - started, 2), **params}


def convert_job(job: dict) -> dict:
    """Every precision of one job; a failure is recorded per precision, never raised."""
    from pipeline import models
    from pipeline.errors import UserError

    try:
        model, _ = models.load_model(Path(job["checkpoint"]))
    except UserError as exc:
        return {p: {"status": "failed", "reason": f"cannot convert to TFLite: {exc}"} for p in job["outputs"]}
    calib = np.load(job["calibration"]).transpose(0, 2, 3, 1).copy() if job.get("calibration") else None
    results = {}
    for precision in job["outputs"]:
        try:
            results[precision] = convert_one(model.eval(), job, precision, calib)
        except Exception as exc:  # one failed precision must not stop the others
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            results[precision] = {"status": "failed",
                                  "reason": f"litert-torch failed for {precision}: {type(exc).__name__}: {first}"}
    return results


def main(jobs_path: str) -> None:
    """Run a list of jobs (one start-up for all of them) and write their results."""
    spec = json.loads(Path(jobs_path).read_text())
    results = [convert_job(job) for job in spec["jobs"]]
    Path(spec["result"]).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
