"""PyTorch -> TFLite fp32 / fp16 / full-integer int8 with litert-torch, run as its own process:
``python -m pipeline.export.litert_convert jobs.json`` (pipeline/export/tflite_tools.py writes the jobs and reads
the results).

Why litert-torch: it is Google's maintained converter and takes every registered net (our CIFAR nets and
torchvision's MobileNets, EfficientNet, ShuffleNets, ResNets) straight from PyTorch, so there is no ONNX ->
TensorFlow translation of our own to keep up with new operators, and no TensorFlow dependency.

Why a subprocess still: the conversion runs MLIR / flatbuffer C++ code, and an abort or segfault there must fail
only the TFLite artifacts, not the quantize stage; one conversion also peaks at ~1.6 GB, which goes back to
the system when the process ends, and jax/litert imports (several seconds) stay out of the pipeline process.
One process converts every precision of every job it is given; the quantize stage starts a few side by side
(pipeline/export/tflite_tools.py ``plan``).

Calls: fp32 is ``litert_torch.convert``; fp16 weights use litert-torch's
``full_fp16_recipe`` as quant_config; both take the model wrapped for NHWC input (what TFLite runtimes and our
deploy runner feed), batch 1, the batch size of on-device inference. int8 is PT2E: the symmetric per-channel static
quantizer, ``prepare_pt2e`` on a strict ``torch.export`` with a free batch size (strict export leaves residual adds
quantizable), calibration on the representative images in batches, ``convert_pt2e``, then the NHWC wrapper and
``convert`` with that quantizer, which gives int8 input and output tensors whose scale and zero point we record.
int8_qat is the same quantizer with ``is_qat=True`` on the graph pipeline/export/qat.py fine-tuned, whose state
the job names, then ``convert_pt2e`` and the rest alike, so its ranges are the learned ones.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.export.int8_graphs import max_pool_padding_as_zero_pad

METADATA_NAME = "compress"


def _nhwc(model, shape_chw):
    import litert_torch
    import torch

    c, h, w = shape_chw
    wrapped = litert_torch.to_channel_last_io(model.eval(), args=[0]).eval()
    return wrapped, (torch.zeros(1, h, w, c),)


def _zero_framed_pools(model, args):
    """The float routes' graph: padded max-pools after a ReLU framed with zeros as in the int8 route, so the float
    PADV2 of -inf (which XNNPACK does not take either: a second partition in resnet and shufflenet fp32 files) goes;
    the model as given where there is nothing to rewrite or it does not export."""
    import torch

    try:
        graph = torch.export.export(model, args).module()
    except Exception:  # litert-torch's own export decides; the file keeps its PADV2
        return model
    return graph if max_pool_padding_as_zero_pad(graph) else model


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


def _quantizer(qat: bool = False):
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )

    return PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False,
                                                                        is_qat=qat))


@contextlib.contextmanager
def _conv_bn_patterns_as_modules():
    """litert-torch 0.10's QAT conv-bn annotation hands torchao a plain function to export as a pattern, and
    torchao 0.18 exports it with torch.export, which takes only modules; wrap such a function in one."""
    import litert_torch.quantize.pt2e_quantizer_utils as utils
    import torch

    original = utils._get_aten_graph_module_for_pattern

    class Pattern(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, *args):
            return self.fn(*args)

    utils._get_aten_graph_module_for_pattern = lambda pattern, *a, **k: original(
        pattern if isinstance(pattern, torch.nn.Module) else Pattern(pattern), *a, **k)
    try:
        yield
    finally:
        utils._get_aten_graph_module_for_pattern = original


@contextlib.contextmanager
def _conv_bn_qat_only_for_present_convs():
    """torchao fuses (prepare) and folds (convert) QAT conv-bn for four conv kinds in turn, each by exporting 24
    pattern variants with torch.export: 96 exports, about 15 s of a 20-s QAT convert on 2 cores for a ResNet-8.
    A kind with no node in the graph cannot match, so its helper is skipped; the result is the same graph."""
    from torchao.quantization.pt2e import qat_utils

    originals = {name: getattr(qat_utils, name) for name in ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper")}

    def only_if_present(helper):
        def run(m, conv_fn, *args, **kwargs):
            op = f"aten::{conv_fn.__name__}"
            if not any(hasattr(n.target, "name") and callable(n.target.name) and n.target.name() == op
                       for n in m.graph.nodes if n.op == "call_function"):
                return m
            return helper(m, conv_fn, *args, **kwargs)
        return run

    for name, helper in originals.items():
        setattr(qat_utils, name, only_if_present(helper))
    try:
        yield
    finally:
        for name, helper in originals.items():
            setattr(qat_utils, name, helper)


def _exported(model, shape_chw):
    """``model`` (NCHW, float) after the int8 route's rewrites (hard activations, padded max-pools), exported with
    a free batch size: strict where it can be (strict export leaves residual adds quantizable), else not."""
    import torch

    model = _hard_activations_as_int8_ops(model).eval()
    example, dims = (torch.zeros(2, *shape_chw),), ({0: torch.export.Dim("batch")},)
    try:
        graph = torch.export.export(model, example, dynamic_shapes=dims, strict=True).module()
    except Exception:  # strict export refuses some Python constructs; non-strict only leaves adds in float
        graph = torch.export.export(model, example, dynamic_shapes=dims).module()
    max_pool_padding_as_zero_pad(graph)
    return graph


def _tflite(converted, shape_chw, quantizer):
    """A converted PT2E graph as a TFLite model with NHWC input of batch 1."""
    import litert_torch
    import torch
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    allow_exported_model_train_eval(converted)  # the wrapper below calls eval() on it (which then returns None)
    c, h, w = shape_chw
    wrapped = litert_torch.to_channel_last_io(converted, args=[0]).eval()
    return litert_torch.convert(wrapped, (torch.zeros(1, h, w, c),), quant_config=QuantConfig(pt2e_quantizer=quantizer))


def qat_graph(model, shape_chw):
    """``model`` (NCHW, float) exported as the int8 route does and prepared for quantization-aware training by its
    quantizer; returns (graph, quantizer). Built the same way in the training process and in the converter, so a
    state_dict saved by one loads into the other."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    quantizer = _quantizer(qat=True)
    graph = _exported(model, shape_chw)
    with _conv_bn_patterns_as_modules(), _conv_bn_qat_only_for_present_convs():
        return prepare_qat_pt2e(graph, quantizer), quantizer


def _int8_qat(model, shape_chw, state_path):
    """The fine-tuned QAT graph (pipeline/export/qat.py) with its learned ranges, as an int8 TFLite model."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    graph, quantizer = qat_graph(model, shape_chw)
    graph.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    with _conv_bn_qat_only_for_present_convs():
        converted = convert_pt2e(graph, fold_quantize=False)
    return _tflite(converted, shape_chw, quantizer)


def _int8(model, shape_chw, calib, batch: int = 32):
    """Full-integer int8 after post-training calibration on ``calib`` (normalised NCHW float images), fed in
    batches of ``batch``: one image a call spent 6.9 of the 8 s of calibration on MobileNetV3-Small's 269 histogram
    observers (256 images at 96 px). The observed ranges are the same either way; a histogram is rebinned less often,
    so a chosen scale can move, with the same accuracy within noise (benchmarks/results/quantize_speed.md)."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = _quantizer()
    prepared = prepare_pt2e(_exported(model, shape_chw), quantizer)
    with torch.no_grad():
        for i in range(0, len(calib), batch):
            prepared(torch.from_numpy(np.ascontiguousarray(calib[i:i + batch])))
    return _tflite(convert_pt2e(prepared, fold_quantize=False), shape_chw, quantizer)


def convert_model(model, precision: str, shape_chw, calib=None):
    """``model`` (NCHW, float, in eval mode) as a litert-torch TFLite model of ``precision`` (fp32, fp16 or int8);
    ``calib``: int8's normalised NCHW float calibration images."""
    import litert_torch
    from litert_torch.generative.quantize import quant_recipes

    if precision == "int8":
        return _int8(model, shape_chw, calib)
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"unknown TFLite precision {precision}")
    wrapped, args = _nhwc(model, shape_chw)
    recipe = quant_recipes.full_fp16_recipe() if precision == "fp16" else None
    return litert_torch.convert(_zero_framed_pools(wrapped, args), args, quant_config=recipe)


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
    path = Path(job["outputs"][precision])
    tmp = path.with_name(f".{path.name}.tmp")
    if precision == "int8_qat":
        converted = _int8_qat(model, (c, h, w), job["qat_state"])
    else:
        converted = convert_model(model, precision, (c, h, w), calib)
    # the bytes, not export(path): litert-torch prints that path as rich markup, which a "[/x]" in it crashes
    raw = bytes(converted.model_content())  # a bytearray from some recipes (fp16)
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
    calib = np.load(job["calibration"]) if job.get("calibration") else None
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
