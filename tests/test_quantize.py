"""quantize (ONNX Runtime side): int8 artifacts really int8, metadata, the accuracy gate and its
fallback, bad calibration input, unsupported ops and a missing converter package."""
from __future__ import annotations

import dataclasses
import sys

import onnx
import pytest
import torch
from onnx import TensorProto
from student_fixture import make_run, run_stage, smoke_config, train_student

from pipeline.errors import UserError
from pipeline.export import onnx_tools, tflite_tools
from pipeline.run.runner import Context

# 128 test images: one image is 0.8 points, so the gate's default 1.0 would test noise here
NO_TFLITE = ("quantize.tflite=[]", "quantize.max_drop=5.0")


def prepared(root, cfg, model=None):
    """A run with export and simplify done."""
    torch.set_num_threads(1)
    run = make_run(root, cfg, steps=30, model=model)
    run_stage(run, cfg, "export")
    run_stage(run, cfg, "simplify")
    return run


def quantize(run, cfg) -> Context:
    """Run the quantize stage and return its context even when it ends with a UserError."""
    from rich.console import Console

    from stages import quantize as stage

    ctx = Context(cfg, run, "quantize", "test", Console(quiet=True))
    try:
        stage.run(ctx)
        ctx.error = None
    except UserError as exc:
        ctx.error = exc
    return ctx


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    cfg = smoke_config(*NO_TFLITE)
    run = prepared(tmp_path_factory.mktemp("good"), cfg)
    return cfg, run, quantize(run, cfg)


def _zero_point_types(proto) -> set:
    inits = {t.name: t for t in proto.graph.initializer}
    return {inits[n.input[2]].data_type for n in proto.graph.node if n.op_type == "QuantizeLinear"}


def test_ort_int8_artifacts(good):
    cfg, run, ctx = good
    assert ctx.error is None
    arts = ctx.metrics["artifacts"]
    for name in ("onnx_int8_x86", "onnx_int8_arm", "onnx_int8_dynamic"):
        assert arts[name]["status"] == "ok", arts[name]
        assert arts[name]["drop_points"] <= cfg.quantize.max_drop
        # the gate decided on the validation split; the test split was evaluated once, for the report
        assert arts[name]["gate_split"] == "val" and "val_top1" in arts[name]["attempts"][-1]
        assert 0 <= arts[name]["val_top1"] <= 1 and 0 <= arts[name]["test_top1"] <= 1
        assert arts[name]["drop_points"] == round(100 * (arts[name]["fp32_top1"] - arts[name]["val_top1"]), 3)
        proto = onnx.load(run.root / "quantize" / f"{name}.onnx")
        assert arts[name]["int8_initializers"] > 0
        conv_weights = [t for t in proto.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4]
        assert conv_weights, f"{name} holds no int8 conv weights"
        meta = onnx_tools.metadata(proto)
        assert meta["format"] == name and meta["input_size"] == [1, 16, 16] and "mean" in meta
    x86 = onnx.load(run.root / "quantize" / "onnx_int8_x86.onnx")
    arm = onnx.load(run.root / "quantize" / "onnx_int8_arm.onnx")
    assert _zero_point_types(x86) == {TensorProto.UINT8}  # uint8 activations on x86
    assert _zero_point_types(arm) == {TensorProto.INT8}   # int8 activations (QDQ) for ARM
    assert ctx.metrics["gate_split"] == "val" and "fp32_val_top1" in ctx.metrics and "fp32_test_top1" in ctx.metrics


def test_console_line_names_the_split_of_each_drop(good):
    """The line printed for a written file gives the gate split's drop under that split's name, then the test
    set's (it once printed the validation drop as the test drop)."""
    from pipeline.export.artifacts import drop_text

    entry = good[2].metrics["artifacts"]["onnx_int8_x86"]
    val_drop = entry["drop_points"]
    test_drop = 100 * (entry["fp32_test_top1"] - entry["test_top1"])
    assert drop_text(entry) == f", val top-1 drop {val_drop:+.2f} points (test {test_drop:+.2f})"
    no_val = {"gate_split": "test", "drop_points": 0.25, "test_top1": 0.5, "fp32_test_top1": 0.5025}
    assert drop_text(no_val) == ", test top-1 drop +0.25 points"
    assert drop_text({"status": "ok"}) == ""

def test_splits_normalised_batch_by_batch(good):
    """The stage holds each split as uint8 and normalises one batch at a time, with the same figures."""
    from pipeline import data
    from pipeline.export import artifacts
    from stages.quantize import top1

    cfg, run, ctx = good
    ds = data.load(cfg.data, cfg.seed)
    lazy, whole = artifacts.Normalized(ds, ds.test_x), artifacts.normalized(ds, ds.test_x)
    assert len(lazy) == len(whole) and lazy.shape == whole.shape and lazy.ndim == 4
    assert (lazy[5:37] == whole[5:37]).all() and lazy[5:37].dtype == whole.dtype
    src = run.root / "simplify" / "onnx_simplified.onnx"
    assert (onnx_tools.logits(src, lazy, batch=7) == onnx_tools.logits(src, whole, batch=7)).all()
    assert ctx.metrics["fp32_test_top1"] == round(top1(onnx_tools.logits(src, whole), ds.test_y.numpy()), 5)


def shifted_logits_model(cfg, shift: float = 2000.0):
    """A student whose logits all carry a large common offset: softmax and argmax are unchanged in
    float, but int8 on the output must span [0, shift] and rounds every class to the same value."""
    model, _ = train_student(cfg, steps=30)
    with torch.no_grad():
        model.fc.bias += shift
    return model


def test_gate_falls_back_to_float_classifier(tmp_path):
    cfg = smoke_config(*NO_TFLITE, "quantize.targets=[x86]")
    run = prepared(tmp_path, cfg, model=shifted_logits_model(smoke_config()))
    entry = quantize(run, cfg).metrics["artifacts"]["onnx_int8_x86"]
    assert entry["status"] == "ok"
    methods = [a["method"] for a in entry["attempts"]]
    assert methods == ["MinMax", "Entropy", "MinMax"]
    assert all(a["drop_points"] > cfg.quantize.max_drop for a in entry["attempts"][:2])
    assert entry["chosen"]["float_nodes"] and entry["drop_points"] <= cfg.quantize.max_drop
    assert any("Gemm" in n for n in entry["chosen"]["float_nodes"])


def test_gate_marks_failed_and_goes_on(tmp_path):
    cfg = smoke_config(*NO_TFLITE)
    # a gate below zero, which the config refuses, so that no artifact can pass
    cfg = dataclasses.replace(cfg, quantize=dataclasses.replace(cfg.quantize, max_drop=-1.0, qat="off"))
    run = prepared(tmp_path, cfg)
    ctx = quantize(run, cfg)
    assert ctx.error is None  # a gate failure is recorded, not a bad input
    for name, tries in (("onnx_int8_x86", 3), ("onnx_int8_arm", 3), ("onnx_int8_dynamic", 2)):
        entry = ctx.metrics["artifacts"][name]
        assert entry["status"] == "failed" and entry["cause"] == "accuracy_gate" and "max_drop" in entry["reason"]
        assert len(entry["attempts"]) == tries
        assert not (run.root / "quantize" / f"{name}.onnx").exists()


def test_empty_calibration_set(good):
    cfg, run, _ = good
    cfg = smoke_config(*NO_TFLITE)  # the config refuses 0; the stage must still cope with no images
    ctx = quantize(run, dataclasses.replace(cfg, quantize=dataclasses.replace(cfg.quantize, calibration_images=0)))
    assert isinstance(ctx.error, UserError) and "calibration" in str(ctx.error)
    arts = ctx.metrics["artifacts"]
    assert arts["onnx_int8_x86"]["status"] == "failed" and "empty" in arts["onnx_int8_x86"]["reason"]
    assert arts["onnx_int8_dynamic"]["status"] == "ok"  # needs no calibration: still written
    assert not (run.root / "quantize" / "onnx_int8_x86.onnx").exists()  # the earlier run's file is gone


def test_wrong_shape_calibration_set(good, monkeypatch):
    from pipeline.export import artifacts

    cfg, run, _ = good
    monkeypatch.setattr(artifacts, "calibration_images", lambda ds, n, seed: torch.zeros(8, 3, 32, 32).numpy())
    ctx = quantize(run, smoke_config(*NO_TFLITE, "quantize.targets=[arm]"))
    assert "shape (8, 3, 32, 32)" in ctx.metrics["artifacts"]["onnx_int8_arm"]["reason"]
    assert isinstance(ctx.error, UserError)


def test_unknown_calibration_method(good):
    cfg, run, _ = good
    with pytest.raises(UserError, match="did you mean 'MinMax'"):
        from stages import quantize as stage
        stage.run(Context(smoke_config("quantize.method=Minmax"), run, "quantize", "t", None))


def test_missing_converter_fails_only_tflite(good, monkeypatch):
    import importlib.util

    cfg, run, _ = good
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "litert_torch" else real(name, *a))
    ctx = quantize(run, smoke_config("quantize.targets=[dynamic]", "quantize.max_drop=5.0"))
    arts = ctx.metrics["artifacts"]
    assert arts["onnx_int8_dynamic"]["status"] == "ok"
    for p in ("fp32", "fp16", "int8"):
        assert arts[f"tflite_{p}"]["status"] == "failed" and "pip install litert-torch" in arts[f"tflite_{p}"]["reason"]
    assert isinstance(ctx.error, UserError) and "not written" in str(ctx.error)


def test_fallback_order_starts_with_configured_method():
    from pipeline.export import ort_quant

    assert ort_quant.method_order("Percentile") == ["Percentile", "MinMax", "Entropy"]
    assert ort_quant.method_order("MinMax")[0] == "MinMax" and len(set(ort_quant.method_order("Entropy"))) == 3


def test_quantizer_crash_fails_only_that_artifact(good, monkeypatch):
    from pipeline.export import ort_quant

    cfg, run, _ = good

    def crash(*args, **kwargs):
        raise RuntimeError("simulated quantizer crash")
    monkeypatch.setattr(ort_quant, "static", crash)
    ctx = quantize(run, smoke_config(*NO_TFLITE, "quantize.targets=[x86, dynamic]"))
    arts = ctx.metrics["artifacts"]
    x86 = arts["onnx_int8_x86"]
    assert x86["status"] == "failed" and "simulated quantizer crash" in x86["reason"]
    assert arts["onnx_int8_dynamic"]["status"] == "ok" and isinstance(ctx.error, UserError)


def test_a_fallback_line_prints_the_quantizers_error_as_it_is(good, monkeypatch):
    """The line that says which calibration method was used instead quotes the first attempt's error, which is
    onnxruntime's text: rich markup in it was read as markup (a '[/b]' raised, a '[word]' vanished)."""
    from rich.console import Console

    from pipeline.export import ort_quant
    from stages import quantize as stage

    cfg, run, _ = good
    real, cfg = ort_quant.static, smoke_config(*NO_TFLITE, "quantize.targets=[x86]")

    def first_fails(src, dst, calib, target, method, *rest):
        if method == cfg.quantize.method:
            raise RuntimeError("node [conv1] has no [/b] range")
        return real(src, dst, calib, target, method, *rest)
    monkeypatch.setattr(ort_quant, "static", first_fails)
    console = Console(record=True, width=400)
    stage.run(Context(cfg, run, "quantize", "test", console))
    assert "(RuntimeError: node [conv1] has no [/b] range)" in console.export_text()


def test_converter_crash_fails_only_tflite(good, monkeypatch):
    import sys

    from pipeline.export import tflite_tools

    cfg, run, _ = good
    monkeypatch.setattr(tflite_tools, "CONVERTER", [sys.executable, "-c", "import os; os.abort()"])
    ctx = quantize(run, smoke_config("quantize.targets=[dynamic]", "quantize.max_drop=5.0"))
    arts = ctx.metrics["artifacts"]
    assert arts["onnx_int8_dynamic"]["status"] == "ok"
    for p in ("fp32", "fp16", "int8"):
        assert arts[f"tflite_{p}"]["status"] == "failed" and "exited with" in arts[f"tflite_{p}"]["reason"]
    assert isinstance(ctx.error, UserError)


@pytest.mark.parametrize("method", ["Entropy", "Percentile"])
def test_histogram_calibration_takes_a_count_that_is_no_multiple_of_the_batch(tmp_path, method):
    """100 images = 3 batches of 32 + 4: those calibrators stack every batch's outputs, so a short last
    batch failed them with 'inhomogeneous shape' and the gate quietly fell back to MinMax."""
    import numpy as np

    from pipeline.export import ort_quant

    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    x = torch.randn(100, 1, 8, 8)
    conv(x[:1])
    src = tmp_path / "m.onnx"
    torch.onnx.export(conv.eval(), x[:1], src, input_names=["input"], dynamic_axes={"input": {0: "n"}}, dynamo=False)
    ort_quant.static(src, tmp_path / "q.onnx", x.numpy().astype(np.float32), "x86", method, True, [])
    assert (tmp_path / "q.onnx").stat().st_size > 0


def test_artifacts_an_earlier_config_asked_for_are_removed(tmp_path):
    """Otherwise the benchmark, the bundle and predict take a file of an older student for this run's."""
    cfg = smoke_config(*NO_TFLITE, "quantize.targets=[dynamic]")
    run = prepared(tmp_path, cfg)
    stale = [run.root / "quantize" / n for n in ("onnx_int8_x86.onnx", "tflite_fp32.tflite")]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"an older student's model")
    ctx = quantize(run, cfg)
    assert ctx.error is None and list(ctx.metrics["artifacts"]) == ["onnx_int8_dynamic"]
    assert not any(p.exists() for p in stale)
    from pipeline.export import inventory
    listed = {a["artifact"] for a in inventory.artifacts(run.root, {"stages": {"quantize": {"metrics": ctx.metrics}}})}
    assert "onnx_int8_dynamic" in listed and not listed & {"onnx_int8_x86", "tflite_fp32", "tflite_int8"}


def test_every_written_artifact_carries_its_int8_audit(good):
    """The smoke student is a ResNet of convolutions, ReLUs and adds: the x86 file (uint8 activations) runs all its
    MACs in ONNX Runtime's int8 kernels; how much of the ARM file (int8 activations) ONNX Runtime fuses on x86
    depends on the CPU (on an AMX Xeon it left every convolution in float between Q/DQ pairs)."""
    _, _, ctx = good
    arts = ctx.metrics["artifacts"]
    assert arts["onnx_int8_x86"]["chosen"]["float_nodes"] == []
    x86, arm = arts["onnx_int8_x86"]["audit"], arts["onnx_int8_arm"]["audit"]
    assert x86["format"] == "onnx" and x86["int8_mac_share"] == 1.0 and not x86.get("float_ops"), x86
    assert x86["line"].startswith("int8 kernels 100% of MACs")
    assert 0.0 <= arm["int8_mac_share"] <= 1.0 and arm["line"].startswith("int8 kernels"), arm


def test_x86_weights_take_7_bits_only_on_a_cpu_without_vnni(tmp_path, monkeypatch):
    """Without VNNI, ORT's u8*s8 pair sums saturate int16 (0.88 test points lost on an AVX2 EPYC): reduce_range."""
    import numpy as np
    from onnx import numpy_helper

    from pipeline.export import ort_quant

    for flags, target, want in [({"avx2", "fma"}, "x86", True), ({"avx2", "avx512_vnni"}, "x86", False),
                                ({"avx2", "avx_vnni"}, "x86", False), ({"avx2"}, "arm", False), (set(), "x86", False)]:
        monkeypatch.setattr(ort_quant, "cpu_flags", lambda f=flags: f)
        assert ort_quant.reduce_range(target) is want, (flags, target)
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    x = torch.randn(64, 1, 8, 8)
    conv(x[:1])
    src = tmp_path / "m.onnx"
    torch.onnx.export(conv.eval(), x[:1], src, input_names=["input"], dynamic_axes={"input": {0: "n"}}, dynamo=False)
    spans = {}
    for reduce in (False, True):
        ort_quant.static(src, tmp_path / "q.onnx", x.numpy().astype(np.float32), "x86", "MinMax", True, [], reduce)
        weights = [numpy_helper.to_array(t) for t in onnx.load(tmp_path / "q.onnx").graph.initializer
                   if t.data_type == TensorProto.INT8 and t.dims and len(t.dims) == 4]
        spans[reduce] = max(int(np.abs(w.astype(int)).max()) for w in weights)
    assert spans[False] == 127 and spans[True] <= 64


def test_conversions_spread_over_the_cores_int8_alone_and_first():
    three = ["fp32", "fp16", "int8"]
    assert tflite_tools.plan(three, 1) == [(three, 1)]
    assert tflite_tools.plan(three, 2) == [(["int8"], 1), (["fp32", "fp16"], 1)]
    assert tflite_tools.plan(three, 16) == [(["int8"], 5), (["fp32"], 5), (["fp16"], 5)]
    assert tflite_tools.plan(["fp32", "fp16"], 4) == [(["fp32"], 2), (["fp16"], 2)]
    assert tflite_tools.plan(["int8_qat"], 2) == [(["int8_qat"], 2)]
    assert tflite_tools.plan([], 2) == []


def test_the_converter_process_gets_its_share_of_threads(tmp_path, monkeypatch):
    """A stand-in converter reports the OMP_NUM_THREADS it was started with as its result."""
    script = ("import json, os, sys; spec = json.load(open(sys.argv[1])); json.dump([{'fp32': {'status': 'failed', "
              "'reason': os.environ.get('OMP_NUM_THREADS', 'unset')}}], open(spec['result'], 'w'))")
    monkeypatch.setattr(tflite_tools, "CONVERTER", [sys.executable, "-c", script])
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    convert = lambda **kw: tflite_tools.convert(tmp_path / "net.pt", {"fp32": tmp_path / "x.tflite"},  # noqa: E731
                                                {"input_size": [1, 4, 4]}, None, **kw)["fp32"]["reason"]
    assert convert(threads=1) == "1"
    assert convert() == "7"  # not given: the user's own setting stands


def test_stop_ends_running_converters_at_once(tmp_path, monkeypatch):
    """What the quantize stage calls when it fails or is interrupted while conversions run on other threads."""
    import threading
    import time

    monkeypatch.setattr(tflite_tools, "CONVERTER", [sys.executable, "-c", "import time; time.sleep(60)"])
    out = {}
    worker = threading.Thread(target=lambda: out.update(tflite_tools.convert(
        tmp_path / "net.pt", {"fp32": tmp_path / "x.tflite"}, {"input_size": [1, 4, 4]}, None)))
    worker.start()
    while not tflite_tools._RUNNING:
        time.sleep(0.05)
    proc = next(iter(tflite_tools._RUNNING))
    started = time.perf_counter()
    tflite_tools.stop()
    worker.join(timeout=10)
    assert not worker.is_alive() and time.perf_counter() - started < 10
    assert proc.poll() is not None and not tflite_tools._RUNNING
    assert out["fp32"]["status"] == "failed" and "exited with" in out["fp32"]["reason"]

