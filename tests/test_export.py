"""export and simplify: ONNX parity with PyTorch, metadata read back, simplifier fallback, bad input."""
from __future__ import annotations

import onnx
import pytest
import torch
from rich.console import Console
from student_fixture import make_run, run_stage, smoke_config

from pipeline import files, models
from pipeline.errors import UserError
from pipeline.export import onnx_tools

FAMILIES = ("resnet8", "wrn16_1", "mobilenetv2")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.set_num_threads(1)
    cfg = smoke_config()
    run = make_run(tmp_path_factory.mktemp("run"), cfg, steps=30)
    return cfg, run, run_stage(run, cfg, "export"), run_stage(run, cfg, "simplify")


def test_export_parity_opset_and_dynamic_batch(exported):
    cfg, run, ctx, _ = exported
    entry = ctx.metrics["artifacts"]["onnx_fp32"]
    assert entry["status"] == "ok" and entry["top1_agreement"] == 1.0
    assert entry["max_abs_diff"] < 1e-4 and entry["parity_images"] == cfg.export.parity_images
    proto = onnx.load(run.root / "export" / "onnx_fp32.onnx")
    assert proto.opset_import[0].version >= 17
    assert proto.graph.input[0].name == "input" and proto.graph.output[0].name == "logits"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    sess = onnx_tools.session(run.root / "export" / "onnx_fp32.onnx")
    assert sess.run(None, {"input": torch.zeros(3, 1, 16, 16).numpy()})[0].shape == (3, 4)


def test_metadata_read_back(exported):
    cfg, run, *_ = exported
    ckpt = models.read_checkpoint(run.root / "distill" / "student.pt")
    for stage, name in (("export", "onnx_fp32"), ("simplify", "onnx_simplified")):
        meta = onnx_tools.metadata(run.root / stage / f"{name}.onnx")
        assert meta["mean"] == ckpt["meta"]["mean"] and meta["std"] == ckpt["meta"]["std"]
        assert meta["classes"] == ckpt["meta"]["classes"] and meta["input_size"] == [1, 16, 16]
        assert meta["layout"] == "NCHW" and meta["format"] == name
        assert meta["student_sha256"] == files.sha256(run.root / "distill" / "student.pt")


def test_simplify_records_counts_and_parity(exported):
    *_, ctx = exported
    entry = ctx.metrics["artifacts"]["onnx_simplified"]
    assert entry["tool"] == "onnxsim" and entry["nodes_before"] >= entry["nodes_after"] > 0
    assert entry["max_abs_diff"] < 1e-4 and entry["top1_agreement"] == 1.0


def test_simplify_falls_back_to_onnxslim(exported, monkeypatch):
    from stages import simplify

    cfg, run, *_ = exported
    monkeypatch.setattr(simplify, "_onnxsim", lambda proto: (_ for _ in ()).throw(RuntimeError("boom")))
    ctx = run_stage(run, cfg, "simplify")
    assert ctx.metrics["artifacts"]["onnx_simplified"]["tool"] == "onnxslim"
    assert ctx.metrics["artifacts"]["onnx_simplified"]["top1_agreement"] == 1.0


def test_missing_simplifiers_are_a_user_error(monkeypatch):
    from stages import simplify

    def missing(proto):
        raise ImportError("no module")
    monkeypatch.setattr(simplify, "_onnxsim", missing)
    monkeypatch.setattr(simplify, "_onnxslim", missing)
    with pytest.raises(UserError, match="pip install onnxsim==0.8.1"):
        simplify.simplify(None, "auto", Console(quiet=True))


@pytest.mark.parametrize("arch", FAMILIES)
def test_export_matrix_onnx(arch, tmp_path):
    check_onnx_export(arch, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [a for a in models.CIFAR_NETS if a not in FAMILIES])
def test_export_matrix_onnx_all(arch, tmp_path):
    check_onnx_export(arch, tmp_path)


def check_onnx_export(arch: str, tmp_path):
    model = models.create(arch, 3, 5, 0.25).eval()
    for m in model.modules():  # non-trivial BN statistics, so folding errors would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / "m.onnx"
    onnx_tools.export(model, path, 3, 8, 17)
    onnx_tools.load(path)
    x = torch.randn(4, 3, 8, 8)
    result = onnx_tools.parity(model(x).detach().numpy(), onnx_tools.logits(path, x.numpy()))
    assert result["max_abs_diff"] < 1e-4 and result["top1_agreement"] == 1.0


def test_no_student_checkpoint(tmp_path):
    from pipeline.run.rundir import RunDir

    run = RunDir(tmp_path)
    run.create()
    with pytest.raises(UserError, match="compress distill"):
        run_stage(run, smoke_config(), "export")


def test_truncated_onnx_is_a_user_error(exported, tmp_path):
    cfg, run, *_ = exported
    bad = tmp_path / "bad.onnx"
    bad.write_bytes((run.root / "export" / "onnx_fp32.onnx").read_bytes()[:500])
    with pytest.raises(UserError, match="truncated or corrupt"):
        onnx_tools.load(bad)


def test_the_parity_images_cover_every_class_of_a_test_split_in_class_order(exported, monkeypatch):
    """They were the first export.parity_images test images: in a photo folder's test split, which is in class
    order, the first classes only."""
    import dataclasses

    from pipeline import data
    from pipeline.run.runner import Context
    from stages import export

    cfg, run, *_ = exported
    real = data.load

    def class_ordered(dcfg, seed):  # every image of class k is the pixel value 40 k: its class is in its pixels
        ds = real(dcfg, seed)
        y = ds.test_y.sort().values
        x = (y * 40).to(torch.uint8)[:, None, None, None].expand_as(ds.test_x).contiguous()
        return dataclasses.replace(ds, test_x=x, test_y=y)
    monkeypatch.setattr(data, "load", class_ordered)
    cfg = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, parity_images=16))
    _, _, ds, x, _ = export.reference(Context(cfg, run, "export", "test", Console(quiet=True)))
    assert len(x) == 16 and len({round(float(v), 4) for v in x[:, 0, 0, 0]}) == len(ds.classes)
