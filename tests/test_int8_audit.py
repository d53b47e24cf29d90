"""pipeline/int8_audit.py on tiny conv nets (16 px): ONNX Runtime int8 coverage (MAC share, float ops left), <1 s,
and TFLite XNNPACK partitions (two litert-torch int8 conversions: 7-12 s on the 2-core machine, under the 20 s
this file may take; mark it slow if it grows past that)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.export import int8_audit, onnx_tools, ort_quant


class Tiny(nn.Module):
    """conv-relu-[mid]-conv-relu-pool-fc."""

    def __init__(self, mid: nn.Module | None = None, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), act()
        self.mid = mid or nn.Identity()
        self.c2, self.a2 = nn.Conv2d(8, 16, 3, padding=1, stride=2), act()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 4)

    def forward(self, x):
        x = self.mid(self.a1(self.c1(x)))
        return self.fc(torch.flatten(self.pool(self.a2(self.c2(x))), 1))


class Sin(nn.Module):  # an op ONNX Runtime's quantizer has no int8 kernel for: it stays float between Q/DQ
    def forward(self, x):
        return torch.sin(x)


def _calib(n: int = 8) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 16, 16)).astype(np.float32)


def _ort_int8(tmp_path, model: nn.Module, float_nodes=lambda pre: []):
    """The model through export, quant_pre_process and the 'x86' static QDQ quantization, with the nodes that
    ``float_nodes(preprocessed proto)`` names left out of quantization."""
    fp32, pre, int8 = tmp_path / "fp32.onnx", tmp_path / "pre.onnx", tmp_path / "int8.onnx"
    onnx_tools.export(model.eval(), fp32, 3, 16, 17)
    ort_quant.preprocess(fp32, pre)
    ort_quant.static(pre, int8, _calib(), "x86", "MinMax", True, float_nodes(onnx_tools.load(pre, check=False)))
    return fp32, int8


C1, C2, FC = 16 * 16 * 8 * 3 * 9, 8 * 8 * 16 * 8 * 9, 16 * 4  # MACs of the two convs and the classifier


def test_relu_conv_net_is_all_int8(tmp_path):
    torch.manual_seed(0)
    fp32, int8 = _ort_int8(tmp_path, Tiny())
    audit = int8_audit.onnx_audit(int8)
    assert audit["int8_mac_share"] == 1.0
    assert audit["int8_kernels"].get("QLinearConv") == 2 and audit["float_convs"] == 0
    assert audit["int8_macs"] == C1 + C2 + FC
    assert audit["quantize"] >= 1 and audit["dequantize"] >= 1  # the float input and the float logits
    assert int8_audit.summary(audit).startswith("int8 kernels 100% of MACs")
    fp = int8_audit.onnx_audit(fp32)  # the float file: the same MACs, none of them int8
    assert fp["int8_mac_share"] == 0.0 and fp["float_macs"] == audit["int8_macs"]


def test_float_op_between_convs_shows_up(tmp_path):
    """A float-only op between the convs: the convs still run as QLinearConv (the MAC share stays 100%), the op
    runs in float between a DequantizeLinear and a QuantizeLinear and is counted as a float op."""
    torch.manual_seed(0)
    _, int8 = _ort_int8(tmp_path, Tiny(mid=Sin()))
    audit = int8_audit.onnx_audit(int8)
    assert audit["float_ops"].get("Sin") == 1
    assert audit["int8_mac_share"] == 1.0
    assert "1 Sin" in int8_audit.summary(audit)
    torch.manual_seed(0)
    _, plain = _ort_int8(tmp_path, Tiny())
    assert audit["quantize"] > int8_audit.onnx_audit(plain)["quantize"]


def test_float_conv_lowers_mac_share(tmp_path):
    """The quantize gate's fallback (ort_quant.sensitive_nodes: first conv and classifier in float): their MACs
    count as float."""
    torch.manual_seed(0)
    _, int8 = _ort_int8(tmp_path, Tiny(), ort_quant.sensitive_nodes)
    audit = int8_audit.onnx_audit(int8)
    assert audit["float_convs"] == 2  # the first Conv and the Gemm
    assert (audit["int8_macs"], audit["float_macs"]) == (C2, C1 + FC)
    assert audit["int8_mac_share"] == pytest.approx(C2 / (C1 + C2 + FC))
    assert int8_audit.summary(audit).startswith("int8 kernels 57% of MACs")


def test_float_weight_conv_between_qdq_is_quantized_by_ort(tmp_path):
    """A conv excluded from quantization but sitting between DequantizeLinear and QuantizeLinear: ORT quantizes
    its weight itself ('<node>_weight_q') and runs QLinearConv; the audit still finds its MACs."""
    torch.manual_seed(0)
    _, int8 = _ort_int8(tmp_path, Tiny(), lambda p: [n.name for n in p.graph.node if n.op_type == "Conv"][1:])
    audit = int8_audit.onnx_audit(int8)
    assert audit["int8_kernels"].get("QLinearConv") == 2 and audit["unmatched_mac_ops"] == {}
    assert audit["int8_mac_share"] == 1.0


def test_dynamic_range_file_counts_its_integer_convs_and_the_float_between_them(tmp_path):
    """The dynamic file holds ConvInteger / MatMulInteger before ORT optimizes it: their MACs are int8 (the audit
    once printed 'no conv/gemm MACs found' for it), and the bias, activation and pooling after each int32 -> float
    Cast are float ops."""
    torch.manual_seed(0)
    fp32, pre, dyn = tmp_path / "fp32.onnx", tmp_path / "pre.onnx", tmp_path / "dyn.onnx"
    onnx_tools.export(Tiny().eval(), fp32, 3, 16, 17)
    ort_quant.preprocess(fp32, pre)
    ort_quant.dynamic(pre, dyn, [])
    audit = int8_audit.onnx_audit(dyn)
    assert audit["int8_kernels"].get("ConvInteger") == 2 and audit["unmatched_mac_ops"] == {}
    assert (audit["int8_macs"], audit["float_macs"]) == (C1 + C2 + FC, 0)
    assert audit["float_ops"].get("Relu") == 2 and audit["float_ops"].get("Add", 0) >= 2
    assert int8_audit.summary(audit).startswith("dynamic-range int8 kernels 100% of MACs")
    from pipeline.report.markdown import int8_lines

    kept = int8_audit.audit(dyn)
    lines = int8_lines([_row("onnx_simplified", 0.16), _row("onnx_int8_dynamic", 1.06, kept)])
    assert "onnx_int8_dynamic is not faster than onnx_simplified on host (6.62x its latency)" in lines[1]
    assert "quantized with dynamic ranges" in lines[1] and "ConvInteger" in lines[1]

def test_tflite_hardswish_leaves_xnnpack_unless_rewritten(tmp_path, monkeypatch):
    """litert-torch PT2E int8 as the pipeline converts: ReLU -> one XNNPACK partition; nn.Hardswish as is -> int8
    HARD_SWISH ops on TFLite's builtin kernels, which split the graph; the pipeline's rewrite keeps it whole."""
    from pipeline.export import litert_convert

    def convert(act, name):
        torch.manual_seed(0)
        litert_convert.convert_model(Tiny(act=act).eval(), "int8", (3, 16, 16), _calib()).export(str(tmp_path / name))
        return int8_audit.tflite_audit(tmp_path / name)

    relu, rewritten = convert(nn.ReLU, "relu.tflite"), convert(nn.Hardswish, "rewritten.tflite")
    monkeypatch.setattr(litert_convert, "_hard_activations_as_int8_ops", lambda model: model)
    as_is = convert(nn.Hardswish, "as_is.tflite")
    assert relu["int8_file"] and relu["partitions"] == 1 and relu["outside"] == {}
    assert int8_audit.summary(relu).endswith("1 partition")
    assert as_is["outside_int8"].get("HARD_SWISH") == 2 and as_is["partitions"] > 1
    assert "HARD_SWISH outside XNNPACK" in int8_audit.summary(as_is)
    assert rewritten["partitions"] == 1 and rewritten["outside"] == {}


def _row(artifact, p50_ms, audit=None):
    row = {"artifact": artifact, "device": "host", "status": "ok", "top1": 0.9,
           "latency": {"one_thread": {"p50_ms": p50_ms}}}
    return {**row, "audit": audit} if audit else row


def test_the_report_says_why_an_int8_file_is_slower_than_fp32():
    from pipeline.report.markdown import int8_lines

    split = {"format": "tflite", "partitions": 20, "outside": {"HARD_SWISH": 19}, "line": "19 HARD_SWISH outside"}
    lines = int8_lines([_row("tflite_fp32", 0.35), _row("tflite_int8", 0.74, split)])
    assert lines[0] == "- tflite_int8: 19 HARD_SWISH outside."
    assert "not faster than tflite_fp32 on host (2.11x its latency)" in lines[1]
    assert "19 HARD_SWISH run outside XNNPACK" in lines[1] and "20 XNNPACK partitions" in lines[1]
    whole = {"format": "tflite", "partitions": 1, "outside": {}, "line": "all 60 ops in XNNPACK: 1 partition"}
    assert len(int8_lines([_row("tflite_fp32", 0.35), _row("tflite_int8", 0.20, whole)])) == 1  # faster: no why
    ort = {"format": "onnx", "int8_mac_share": 1.0, "float_ops": {}, "line": "int8 kernels 100% of MACs"}
    lines = int8_lines([_row("onnx_simplified", 0.39), _row("onnx_int8_x86", 0.34, ort)])
    assert lines[1] == ("- onnx_int8_x86 is only a little faster than onnx_simplified on host (0.87x its latency): "
                        "its int8 kernels gain little over fp32 for this net and size.")


def test_inspect_prints_the_audit_and_refuses_what_it_cannot_read(tmp_path, cli):
    torch.manual_seed(0)
    _, int8 = _ort_int8(tmp_path, Tiny())
    result = cli("inspect", str(int8))
    assert result.exit_code == 0 and "int8 kernels 100% of MACs" in result.output and "QLinearConv" in result.output
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    int8.with_suffix(".txt").write_bytes(int8.read_bytes())
    for bad, words in ((tmp_path / "missing.onnx", "does not exist"), (tmp_path / "bad.onnx", "damaged"),
                       (tmp_path, "is a folder"), (int8.with_suffix(".txt"), "not a .tflite or .onnx")):
        result = cli("inspect", str(bad))
        assert result.exit_code == 2 and words in result.output, result.output


def test_inspect_takes_an_upper_case_suffix(tmp_path, cli, monkeypatch):
    """'MODEL.ONNX' was refused as 'not a .tflite or .onnx file'."""
    torch.manual_seed(0)
    _, int8 = _ort_int8(tmp_path, Tiny())
    upper = tmp_path / "M [b].ONNX"
    upper.write_bytes(int8.read_bytes())
    result = cli("inspect", str(upper))
    assert result.exit_code == 0 and "int8 kernels 100% of MACs" in result.output, result.output
    for module in ("ai_edge_litert", "ai_edge_litert.interpreter"):  # .TFLITE goes to the TFLite audit
        monkeypatch.setitem(sys.modules, module, None)
    (tmp_path / "M.TFLITE").write_bytes(b"a model file")
    assert "ai-edge-litert is not installed" in cli("inspect", str(tmp_path / "M.TFLITE")).output


@pytest.mark.parametrize("name, modules, package", [
    ("m.tflite", ("ai_edge_litert", "ai_edge_litert.interpreter"), "ai-edge-litert"),
    ("m.onnx", ("onnxruntime",), "onnxruntime")])
def test_inspect_without_the_runtime_names_the_package_not_a_damaged_file(tmp_path, monkeypatch, cli, name, modules,
                                                                          package):
    for module in modules:  # the submodule too: an earlier test may have imported it
        monkeypatch.setitem(sys.modules, module, None)
    (tmp_path / name).write_bytes(b"a model file")  # never read: the import fails first
    result = cli("inspect", str(tmp_path / name))
    assert result.exit_code == 2, result.output
    assert f"{package} is not installed" in result.output and f"pip install {package}" in result.output
    assert "damaged" not in result.output


def test_the_int8_rewrite_of_hard_swish_keeps_the_function():
    from pipeline.export import litert_convert
    from pipeline.models import create

    torch.manual_seed(0)
    net = create("mobilenet_v3_small", 3, 10, 1.0).eval()
    rewritten = litert_convert._hard_activations_as_int8_ops(net)
    assert not [m for m in rewritten.modules() if isinstance(m, (nn.Hardswish, nn.Hardsigmoid))]
    assert [m for m in net.modules() if isinstance(m, nn.Hardswish)]  # the trained net itself is untouched
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), rewritten(x), atol=1e-5)


def test_hard_swish_reaches_onnx_runtimes_int8_kernels_and_keeps_its_function(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    fp32, int8 = _ort_int8(tmp_path, Tiny(act=nn.Hardswish))
    assert not int8_audit.onnx_audit(int8)["float_ops"]  # no HardSigmoid / HardSwish left in float
    proto = onnx_tools.load(fp32)
    assert ort_quant.hard_activations_as_int8_ops(proto) == 2
    onnx_tools.save(proto, tmp_path / "rewritten.onnx")
    x = _calib(4)
    before, after = (ort.InferenceSession(str(p)).run(None, {"input": x})[0]
                     for p in (fp32, tmp_path / "rewritten.onnx"))
    assert np.allclose(before, after, atol=1e-5)


def test_the_report_says_which_runtime_each_device_used_and_its_partitions():
    from pipeline.report.markdown import int8_lines

    host = {**_row("tflite_int8", 0.3), "precision": "int8", "xnnpack_partitions": 1,
            "tflite_package": "ai-edge-litert"}
    pi = {**host, "device": "pi", "xnnpack_partitions": 0, "tflite_package": "tflite-runtime"}
    lines = int8_lines([host, pi])
    assert "- tflite_int8 on host (ai-edge-litert): runs in 1 XNNPACK partition." in lines
    assert "- tflite_int8 on pi (tflite-runtime): runs on TFLite's builtin kernels only." in lines


def test_a_device_the_audit_did_not_run_on_gets_its_own_reason():
    """The host's audit (one XNNPACK partition, made with ai-edge-litert) must not explain a slow int8 file on a
    Pi whose tflite-runtime delegates no int8 op: the Pi row's own partition count does."""
    from pipeline.report.markdown import int8_lines

    whole = {"format": "tflite", "partitions": 1, "outside": {}, "line": "all 16 ops in XNNPACK: 1 partition"}
    host = [_row("tflite_fp32", 0.30), {**_row("tflite_int8", 0.20, whole), "xnnpack_partitions": 1}]
    pi = [{**_row("tflite_fp32", 1.0), "device": "pi"},
          {**_row("tflite_int8", 2.5), "device": "pi", "precision": "int8", "xnnpack_partitions": 0,
           "tflite_package": "tflite-runtime"}]
    why = [line for line in int8_lines(host + pi) if "not faster" in line]
    assert why == ["- tflite_int8 is not faster than tflite_fp32 on pi (2.50x its latency): tflite-runtime there "
                   "hands none of its ops to XNNPACK, so it runs on TFLite's builtin kernels only."]
    ort = {"format": "onnx", "int8_mac_share": 0.58, "float_ops": {"Conv": 6}, "quantize": 9, "dequantize": 23,
           "line": "int8 kernels 58% of MACs"}
    rows = [_row("onnx_simplified", 0.16), _row("onnx_int8_arm", 0.26, ort),
            {**_row("onnx_simplified", 1.0), "device": "pi"}, {**_row("onnx_int8_arm", 1.2), "device": "pi"}]
    lines = int8_lines(rows)
    assert "keeps 6 Conv in float" in next(line for line in lines if "on host" in line and "not faster" in line)
    assert "the int8 audit ran on host, whose runtimes may differ from pi's" in next(
        line for line in lines if "on pi" in line)
    # on an x86 host the ARM file is slow by design: the line says which file is this CPU's
    for arch, says in (("x86_64", True), ("aarch64", False)):
        lines = int8_lines([{**r, "arch": arch} for r in rows[:2]])
        assert ("onnx_int8_x86 is the one for an x86 CPU" in lines[-1]) is says
