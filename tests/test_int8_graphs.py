"""The int8 TFLite graphs of the nets we register: the conversion's rewrites keep the function
(pipeline/export/litert_convert.py), and every student-sized torchvision net, the quantization-friendly
MobileNetV3 variants included, converts to an int8 file that XNNPACK runs whole (slow: one litert-torch int8
conversion per net: 25-85 s each, 8.5 min for the nine on the busy 2-core machine)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.export import int8_audit, int8_graphs, litert_convert


class Pooled(nn.Module):
    """conv -> [ReLU] -> MaxPool2d(3, 2, padding=1) -> conv: the stem of a ResNet or ShuffleNet."""

    def __init__(self, relu: bool):
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU() if relu else nn.Identity()
        self.pool, self.out = nn.MaxPool2d(3, 2, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.out(self.pool(self.act(self.conv(x))))


def _exported(model):
    wrapped, args = litert_convert._nhwc(model.eval(), (3, 16, 16))
    return torch.export.export(wrapped, args, strict=True).module()


def _ops(graph, name: str) -> list:
    return [n for n in graph.graph.nodes if n.op == "call_function" and name in str(n.target)]


def test_max_pool_after_relu_pads_with_zero_and_keeps_the_function():
    torch.manual_seed(0)
    graph = _exported(Pooled(relu=True))
    xs = [torch.randn(1, 16, 16, 3) * 3 for _ in range(4)]
    before = [graph(x) for x in xs]
    assert int8_graphs.max_pool_padding_as_zero_pad(graph) == 1
    (pool,) = _ops(graph, "max_pool2d")
    assert list(pool.args[3]) == [0, 0] and tuple(pool.args[0].meta["val"].shape) == (1, 8, 18, 18)
    assert [n.args[1] for n in _ops(graph, "aten.cat")] == [3, 2]
    for x, y in zip(xs, before):  # a pad value above the ReLU's 0 would show here
        assert torch.allclose(graph(x), y, rtol=0, atol=1e-6)


def test_max_pool_on_signed_input_keeps_its_padding():
    """Without a ReLU in front, a zero pad could beat a window's negative values: the graph is left alone."""
    graph = _exported(Pooled(relu=False))
    assert int8_graphs.max_pool_padding_as_zero_pad(graph) == 0 and not _ops(graph, "aten.cat")


STUDENTS = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_small_relu", "mobilenet_v3_small_minimal",
            "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "resnet18"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", STUDENTS)
def test_a_registered_students_int8_tflite_file_is_one_xnnpack_partition(tmp_path, arch):
    """The pipeline's int8 conversion of the students people ship: every op in one XNNPACK partition, no int8 op
    left on TFLite's builtin kernels (hard-swish, the max-pool's PADV2 and the like would be)."""
    from pipeline.models import create

    size = 64
    torch.manual_seed(0)
    net = create(arch, 3, 10, 1.0).train()
    with torch.no_grad():
        for _ in range(3):  # statistics that are not the reset ones
            net(torch.randn(8, 3, size, size))
    calib = np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32)
    litert_convert.convert_model(net.eval(), "int8", (3, size, size), calib).export(str(tmp_path / "int8.tflite"))
    audit = int8_audit.tflite_audit(tmp_path / "int8.tflite")
    assert audit["int8_file"], "no int8 conv in the file"
    assert audit["partitions"] == 1 and not audit["outside_int8"], int8_audit.summary(audit)


def test_the_qat_graph_frames_its_max_pool_with_zeros_at_any_batch_size():
    """The QAT graph has a free batch size: the zero blocks take theirs from the input, and the rewrite is the one
    the post-training route makes (the padded max-pool's PADV2 would leave XNNPACK in tflite_int8_qat)."""
    pytest.importorskip("litert_torch")
    graph, _ = litert_convert.qat_graph(Pooled(relu=True), (3, 16, 16))
    (pool,) = _ops(graph, "max_pool2d")
    assert list(pool.args[3]) == [0, 0] and len(_ops(graph, "aten.cat")) == 2
    for n in (1, 5):
        assert graph(torch.randn(n, 3, 16, 16)).shape == (n, 4, 8, 8)


@pytest.mark.slow
def test_a_qat_file_with_a_padded_max_pool_is_one_xnnpack_partition(tmp_path):
    from pipeline.export import qat

    torch.manual_seed(0)
    model = Pooled(relu=True).eval()
    net = qat.QatNet(litert_convert.qat_graph(model, (3, 16, 16))[0], freeze_after=2).train()
    with torch.no_grad():
        for _ in range(3):  # observed ranges
            net(torch.randn(8, 3, 16, 16))
    torch.save(net.graph.state_dict(), tmp_path / "qat.pt")
    litert_convert._int8_qat(model, (3, 16, 16), tmp_path / "qat.pt").export(str(tmp_path / "qat.tflite"))
    audit = int8_audit.tflite_audit(tmp_path / "qat.tflite")
    assert audit["int8_file"] and audit["partitions"] == 1 and not audit["outside_int8"], int8_audit.summary(audit)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_float_file_with_a_padded_max_pool_is_one_xnnpack_partition_and_the_same_function(tmp_path, precision):
    """The float routes frame the max-pool with zeros too: no float PADV2 left outside XNNPACK, same outputs."""
    from ai_edge_litert.interpreter import Interpreter

    torch.manual_seed(0)
    model = Pooled(relu=True).eval()
    path = tmp_path / f"{precision}.tflite"
    litert_convert.convert_model(model, precision, (3, 16, 16)).export(str(path))
    audit = int8_audit.tflite_audit(path)
    assert audit["partitions"] == 1 and not audit["outside"], int8_audit.summary(audit)
    x = torch.randn(1, 16, 16, 3)
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x.numpy())
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    want = model(x.permute(0, 3, 1, 2)).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-2 if precision == "fp16" else 1e-4)
