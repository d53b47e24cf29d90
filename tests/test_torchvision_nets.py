"""torchvision architectures: logits and stride-boundary maps at 64 px, the stage split the adaptive module
uses, AMAM plans between unlike nets (aligned by resolution), and starting from the user's weights."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline import models
from pipeline.config import DistillConfig, TrainConfig
from pipeline.distill import adaptive
from pipeline.distill import methods as distillers
from pipeline.errors import UserError
from pipeline.models import weights as weights_mod
from pipeline.train.optim import make_optimizer, param_groups


@pytest.mark.parametrize("name", list(models.TORCHVISION_NETS))
def test_logits_maps_and_stage_split(name):
    torch.manual_seed(0)
    model = models.create(name, 3, 7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, maps = model.forward_maps(x)
        direct = model(x)
        h = model.stem(x)
        for stage in model.stages:
            h = stage(h)
        split = model.head(h)
    assert logits.shape == (2, 7)
    assert torch.allclose(logits, direct, atol=1e-5) and torch.allclose(split, direct, atol=1e-5)
    assert [tuple(m.shape) for m in maps] == [(2, c, 64 // s, 64 // s)
                                              for c, s in zip(model.stage_channels, (2, 4, 8, 16, 32))]
    # the traced graphs are caches outside the state_dict: torchvision's keys under net.
    assert all(k.startswith("net.") for k in model.state_dict())


def test_one_channel_input_and_train_mode_maps():
    model = models.create("mobilenet_v3_small", 1, 4).train()
    logits, maps = model.forward_maps(torch.randn(2, 1, 64, 64))
    logits.sum().backward()
    assert model.net.features[0][0].weight.shape[1] == 1 and model.net.features[0][0].weight.grad is not None
    assert maps[-1].shape[-1] == 2


def test_width_is_fixed_for_torchvision_nets():
    with pytest.raises(UserError, match="published width"):
        models.create("resnet18", 3, 5, 0.5)


def test_checkpoint_round_trip(tmp_path):
    model = models.create("shufflenet_v2_x0_5", 3, 3).eval()
    meta = {"channels": 3, "classes": ["a", "b", "c"], "size": 64}
    loaded, _ = models.load_model(models.save_checkpoint(tmp_path / "m.pt", model, "shufflenet_v2_x0_5", 1.0, meta))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))


# --- the adaptive module between unlike nets -----------------------------------------------------------

def test_plan_aligns_stages_by_resolution():
    teacher, student = models.create("resnet18", 3, 5).eval(), models.create("mobilenet_v3_small", 3, 5).eval()
    adapted = adaptive.build(teacher, student, [1, 3], 3, 64).eval()
    assert adapted.student_stages == {1: 1, 3: 3}
    with torch.no_grad():
        _, s_maps = student.forward_maps(torch.randn(2, 3, 64, 64))
        logits, hints = adapted.forward_hints(torch.randn(2, 3, 64, 64), projections := {})
    assert logits.shape == (2, 5)
    assert hints[1].shape == s_maps[1].shape == (2, 16, 16, 16) and hints[3].shape == s_maps[3].shape
    assert projections[3].shape == (2, 256, 4, 4)  # back to resnet18's layer3 width for its layer4


def test_cifar_teacher_and_torchvision_student_pair_by_resolution():
    # at 32 px resnet8's maps are 32, 16, 8 px; mobilenet_v3_small's 16, 8, 4, 2, 1
    teacher, student = models.create("resnet8", 3, 5, 0.5), models.create("mobilenet_v3_small", 3, 5)
    specs = adaptive.plan(teacher, student, [1, 2], 3, 32)
    assert [(s["stage"], s["student_stage"], s["student_shape"]) for s in specs] == \
        [(1, 0, (16, 16, 16)), (2, 1, (16, 8, 8))]
    with pytest.raises(UserError, match=r"adapt.stages has 0, whose 32x32 map no student stage has.*\[1, 2\]"):
        adaptive.plan(teacher, student, [0], 3, 32)


def test_pair_without_common_resolution_is_one_line():
    coarse = models.StagedNet(nn.Conv2d(3, 8, 3, 8, 1), [nn.Identity()], [8], 5)  # only a stride-8 map
    teacher = models.create("resnet8", 3, 5, 0.5)
    with pytest.raises(UserError) as err:
        adaptive.plan(teacher, coarse, [1], 3, 16)
    msg = str(err.value)
    assert "\n" not in msg and "share no map resolution" in msg
    assert "16x16 (stride 1), 8x8 (stride 2), 4x4 (stride 4)" in msg and "2x2 (stride 8)" in msg


def test_ama_loss_trains_through_unlike_pair():
    torch.manual_seed(0)
    teacher, student = models.create("resnet18", 3, 5).eval(), models.create("mobilenet_v3_small", 3, 5)
    adapted = adaptive.build(teacher, student, [1], 3, 32)
    task = distillers.create("ama", student, adapted, DistillConfig(), [1], (3, 32))
    task.train()
    loss, logits = task(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    loss.backward()
    assert logits.shape == (2, 5) and torch.isfinite(loss)
    assert student.net.features[1].block[0][0].weight.grad is not None


# --- starting from the user's weights ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tv_resnet18(tmp_path_factory):
    """A torchvision-format resnet18 state_dict (1000 classes, RGB), as torchvision's own weights file."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), path)
    return path, net.state_dict()


def test_torchvision_file_with_head_and_channel_adaptation(tv_resnet18):
    path, state = tv_resnet18
    logs = []
    model = models.create_from("resnet18", 1, 4, weights=str(path), log=logs.append)
    got = model.net.state_dict()
    assert torch.equal(got["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])
    assert torch.allclose(got["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    assert got["fc.weight"].shape == (4, 512)
    assert any("classifier re-initialised (1000 classes in the file, 4 here)" in m for m in logs)
    assert any("first conv adapted from 3 to 1 input channels" in m for m in logs)
    assert "net.fc.weight" not in model.loaded_params and "net.layer1.0.conv1.weight" in model.loaded_params


def test_backbone_trains_slower_than_new_head(tv_resnet18):
    model = models.create_from("resnet18", 3, 4, weights=str(tv_resnet18[0]), log=lambda m: None)
    cfg = TrainConfig(lr=0.2, backbone_lr=0.1)
    opt, _ = make_optimizer(param_groups(model, model, cfg.lr, cfg.backbone_lr), cfg, 10)
    head, backbone = opt.param_groups  # OneCycleLR peaks each group at its own max_lr
    assert any(p is model.net.fc.weight for p in head["params"]) and len(head["params"]) == 2
    assert head["max_lr"] == pytest.approx(0.2) and backbone["max_lr"] == pytest.approx(0.02)
    assert len(backbone["params"]) == len(list(model.parameters())) - 2


def test_compress_checkpoint_as_weights(tmp_path):
    src = models.create("mobilenet_v3_small", 3, 5).eval()
    meta = {"channels": 3, "classes": list("abcde"), "size": 64}
    path = models.save_checkpoint(tmp_path / "s.pt", src, "mobilenet_v3_small", 1.0, meta)
    model = models.create_from("mobilenet_v3_small", 3, 5, weights=str(path), log=lambda m: None)
    for (k, a), b in zip(src.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(UserError, match="compress checkpoint of a mobilenet_v3_small, not a resnet18"):
        models.create_from("resnet18", 3, 5, weights=str(path))


def test_training_checkpoint_gives_its_state_dict(tmp_path, tv_resnet18):
    """What training scripts save: the weights under some key beside the optimizer and the epoch."""
    path, state = tv_resnet18
    for key in ("model_state_dict", "my_weights"):  # a usual name, and the only dict of tensors under any name
        torch.save({"epoch": 7, "optimizer": {"state": {}, "param_groups": []}, key: state}, tmp_path / "c.pt")
        model = models.create_from("resnet18", 3, 5, weights=str(tmp_path / "c.pt"), log=lambda m: None)
        assert torch.equal(model.net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"]), key


def test_a_compress_training_state_loads_with_its_task_prefix(tmp_path):
    """last.pt keeps the training task's state: the net's tensors under 'model.' (and torch.compile's
    '_orig_mod.' is the same kind of prefix)."""
    src = models.create("resnet8", 3, 5)
    for prefix in ("model.", "_orig_mod."):
        torch.save({"epoch": 1, "task": {prefix + k: v for k, v in src.state_dict().items()}}, tmp_path / "t.pt")
        model = models.create_from("resnet8", 3, 5, weights=str(tmp_path / "t.pt"), log=lambda m: None)
        assert torch.equal(model.stem[0].weight, src.stem[0].weight), prefix


def test_bad_weights_are_one_line_errors(tmp_path, tv_resnet18):
    with pytest.raises(UserError, match="does not exist"):
        models.create_from("resnet18", 3, 5, weights=str(tmp_path / "nope.pth"))
    with pytest.raises(UserError, match=r"do not fit a mobilenet_v2: \d+ tensors missing.*another architecture"):
        models.create_from("mobilenet_v2", 3, 5, weights=str(tv_resnet18[0]))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a PyTorch state_dict"):
        models.create_from("resnet18", 3, 5, weights=str(tmp_path / "junk.pth"))
    torch.save(models.create("resnet8", 3, 5), tmp_path / "whole.pt")  # torch.save(model), not its state_dict
    with pytest.raises(UserError, match=r"student.weights: .*whole.pt holds a whole pickled model.*state_dict\(\)"):
        models.create_from("resnet8", 3, 5, weights=str(tmp_path / "whole.pt"), field="student.weights")
    torch.save({"a": tv_resnet18[1], "b": tv_resnet18[1]}, tmp_path / "two.pt")
    with pytest.raises(UserError, match=r"several state_dicts \(a, b\)"):
        models.create_from("resnet18", 3, 5, weights=str(tmp_path / "two.pt"))
    with pytest.raises(UserError, match="is a folder; give the weights file in it"):
        models.create_from("resnet18", 3, 5, weights=str(tmp_path))
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(UserError, match="holds an empty dict, not a state_dict"):
        models.create_from("resnet18", 3, 5, weights=str(tmp_path / "empty.pt"))
    torch.save({"epoch": 3}, tmp_path / "none.pt")
    with pytest.raises(UserError, match="holds no state_dict .*keys are epoch"):
        models.create_from("resnet18", 3, 5, weights=str(tmp_path / "none.pt"))
    nan = dict(tv_resnet18[1], **{"layer1.0.conv1.weight": torch.full((64, 64, 3, 3), float("nan"))})
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(UserError, match=r"NaN or infinite values \(e.g. layer1.0.conv1.weight\)"):
        models.create_from("resnet18", 3, 5, weights=str(tmp_path / "nan.pth"))
    wrong = {k: v for k, v in tv_resnet18[1].items()}
    wrong["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match=r"layer1.0.conv1.weight is \(64, 64, 1, 1\)"):
        models.create_from("resnet18", 3, 5, weights=str(tmp_path / "wrong.pth"))


def test_channel_adaptation_keeps_the_response_of_a_grey_image():
    w = torch.randn(8, 3, 3, 3)
    grey = torch.rand(1, 1, 5, 5)
    rgb = grey.repeat(1, 3, 1, 1)
    one = torch.nn.functional.conv2d(grey, weights_mod.adapt_channels(w, 1))
    assert torch.allclose(one, torch.nn.functional.conv2d(rgb, w), atol=1e-5)
    assert weights_mod.adapt_channels(w, 4).shape == (8, 4, 3, 3)


def test_teacher_epochs_0_uses_the_weights_as_given(tmp_path):
    from student_fixture import make_run, run_stage, smoke_config

    given = models.create("resnet8", 1, 4, 0.5).eval()
    meta = {"channels": 1, "classes": ["c0", "c1", "c2", "c3"], "size": 16}
    path = models.save_checkpoint(tmp_path / "given.pt", given, "resnet8", 0.5, meta)
    cfg = smoke_config("teacher.epochs=0", f"teacher.weights={path}")
    run = make_run(tmp_path / "run", cfg, steps=0)
    ctx = run_stage(run, cfg, "teacher")
    assert ctx.metrics["epochs"] == 0 and 0 <= ctx.metrics["test_top1"] <= 1
    written, ckpt = models.load_model(run.root / "teacher" / "model.pt", expect_arch="resnet8")
    for a, b in zip(given.state_dict().values(), written.state_dict().values()):
        assert torch.equal(a, b)
    assert not (run.root / "teacher" / "metrics.jsonl").exists()  # nothing was trained
    with pytest.raises(UserError, match="teacher.weights is empty"):
        run_stage(run, smoke_config("teacher.epochs=0"), "teacher")
    other = models.save_checkpoint(tmp_path / "ten.pt", models.create("resnet8", 1, 10, 0.5), "resnet8", 0.5,
                                   {**meta, "classes": [str(i) for i in range(10)]})
    with pytest.raises(UserError, match=r"leave 2 tensors untrained \(e.g. fc.weight\).*teacher.epochs to 1"):
        run_stage(run, smoke_config("teacher.epochs=0", f"teacher.weights={other}"), "teacher")


@pytest.mark.parametrize("method", ["fitnets", "at", "ama"])
def test_map_methods_pair_stages_by_resolution_not_index(method):
    """A CIFAR-style teacher (maps at stride 1, 2, 4) and a MobileNet student (stride 2 ... 32): index pairing
    would match 32x32 maps with 16x16 ones; resolution pairing matches teacher stage 1 with student stage 0."""
    torch.manual_seed(0)
    teacher, student = models.create("resnet8", 3, 5, 0.5).eval(), models.create("mobilenet_v3_small", 3, 5)
    assert adaptive.stage_pairs(teacher, student, 3, 32) == {1: 0, 2: 1}
    source = adaptive.build(teacher, student, [1], 3, 32) if method == "ama" else teacher
    task = distillers.create(method, student, source, DistillConfig(), [1], (3, 32))
    task.train()
    loss, logits = task(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert logits.shape == (4, 5) and torch.isfinite(loss)
    pairs = task.teacher.student_stages if method == "ama" else task.pairs
    assert pairs == ({1: 0, 2: 1} if method == "at" else {1: 0})  # at: every stage with a match
    if method == "fitnets":
        with pytest.raises(UserError, match=r"fitnets .* \[0\] has no student stage of its resolution; use stages "
                                            r"from \[1, 2\]"):
            distillers.create(method, student, teacher, DistillConfig(), [0], (3, 32))
