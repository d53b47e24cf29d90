import pytest
import torch

from pipeline import models
from pipeline.errors import UserError


@pytest.mark.parametrize("name", sorted(models.CIFAR_NETS))
def test_every_model_output_and_activation_maps(name):
    # odd sizes check the stride-2 rounding; small inputs and widths keep the deep nets fast
    channels, classes, size = (3, 7, 9) if len(name) % 2 else (1, 10, 12)
    model = models.create(name, channels, classes, 0.25 if name.startswith("wrn") else 1.0).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        logits, maps = model.forward_maps(x)
        assert torch.allclose(model(x), logits)
    assert logits.shape == (2, classes)
    assert len(maps) == len(model.stages) == 3
    sizes = [size, (size + 1) // 2, (size + 3) // 4]
    for fmap, c, s in zip(maps, model.stage_channels, sizes):
        assert fmap.shape == (2, c, s, s)


def test_run_stages_composes_to_forward():
    model = models.create("resnet8", 1, 10).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        h = model.run_stages(model.stem(x), 0, 1)
        assert torch.allclose(model.head(model.run_stages(h, 1, 3)), model(x), atol=1e-6)


def test_width_scales_channels():
    assert models.create("resnet20", 1, 10, 0.5).stage_channels == [8, 16, 32]
    assert models.create("wrn16_2", 1, 10).stage_channels == [32, 64, 128]


def test_unknown_model_lists_closest():
    with pytest.raises(UserError, match="did you mean 'resnet20'.*valid models: resnet8"):
        models.create("resnet_20", 1, 10)


def test_checkpoint_round_trip_and_bad_checkpoints(tmp_path):
    meta = {"channels": 1, "classes": ["a", "b"], "size": 16, "mean": [0.5], "std": [0.25]}
    model = models.create("resnet8", 1, 2)
    path = models.save_checkpoint(tmp_path / "m.pt", model, "resnet8", 1.0, meta)
    loaded, ckpt = models.load_model(path, expect_arch="resnet8")
    assert ckpt["meta"] == meta
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(UserError, match="holds a resnet8 but the config asks for resnet20"):
        models.load_model(path, expect_arch="resnet20")
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="truncated or corrupt"):
        models.load_model(truncated)
    with pytest.raises(UserError, match="does not exist"):
        models.load_model(tmp_path / "missing.pt")
    other = torch.load(path, weights_only=True)
    other["arch"] = "mobilenetv2"  # weights of one net under the name of another
    torch.save(other, tmp_path / "o.pt")
    with pytest.raises(UserError, match="does not fit a mobilenetv2"):
        models.load_model(tmp_path / "o.pt")


def test_the_same_weights_save_as_the_same_bytes_whatever_the_file_name(tmp_path):
    # downstream fingerprints hash these files: a stage retrained to identical weights must not look changed
    meta = {"channels": 1, "classes": ["a", "b"], "size": 16, "mean": [0.5], "std": [0.25]}
    torch.manual_seed(0)
    model = models.create("resnet8", 1, 2)
    a = models.save_checkpoint(tmp_path / "model.pt", model, "resnet8", 1.0, meta)
    b = models.save_checkpoint(tmp_path / "other" / "adapted.pt", model, "resnet8", 1.0, meta)
    assert a.read_bytes() == b.read_bytes()
    models.load_model(b, expect_arch="resnet8")


def test_mobilenet_v3_small_variants_are_registry_rows_with_torchvision_keys():
    """The quantization-friendly rows: no hard-swish (relu), no hard-swish nor squeeze-excite (minimal); every
    tensor they keep has torchvision's name and shape, and a config names them like any other net."""
    from torch import nn
    from torchvision.ops.misc import SqueezeExcitation

    from pipeline import preflight
    from pipeline.config import TrainConfig

    base, relu, minimal = (models.create(n, 3, 10) for n in
                           ("mobilenet_v3_small", "mobilenet_v3_small_relu", "mobilenet_v3_small_minimal"))

    def kinds(m):
        return {type(x) for x in m.modules()}
    assert nn.Hardswish in kinds(base) and nn.Hardswish not in kinds(relu) | kinds(minimal)
    assert {nn.Hardsigmoid, SqueezeExcitation} <= kinds(relu)
    assert not {nn.Hardsigmoid, SqueezeExcitation} & kinds(minimal)
    shapes = {k: v.shape for k, v in base.state_dict().items()}
    assert {k: v.shape for k, v in relu.state_dict().items()} == shapes
    kept = {k: v.shape for k, v in minimal.state_dict().items()}
    assert kept.items() < shapes.items() and all(".fc1." in k or ".fc2." in k for k in shapes.keys() - kept.keys())
    assert relu.stage_channels == minimal.stage_channels == base.stage_channels
    for name in ("mobilenet_v3_small_relu", "mobilenet_v3_small_minimal"):
        preflight._check_net("student", TrainConfig(arch=name))


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v3_small_relu", "mobilenet_v3_small_minimal"])
def test_a_mobilenet_v3_row_takes_a_training_step_through_both_forwards(name):
    """A registered row trains: logits and stage maps in train mode (dropout on) back-propagate, through
    ``forward`` and through the traced ``forward_maps`` the distillation methods use."""
    torch.manual_seed(0)
    net = models.create(name, 3, 10).train()
    x = torch.randn(2, 3, 64, 64)
    logits, maps = net.forward_maps(x)
    (logits.square().mean() + sum(m.square().mean() for m in maps) + net(x).square().mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)


def test_default_weights_of_a_variant_are_its_torchvision_nets(monkeypatch):
    """weights: DEFAULT for a variant loads torchvision's weights of the net it is built from; the minimal
    variant leaves the squeeze-excite tensors out."""
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v3_small(weights=None).state_dict()
    asked = []

    class Weights:
        class DEFAULT:
            @staticmethod
            def get_state_dict(progress):
                return source

    monkeypatch.setattr(torchvision.models, "get_model_weights", lambda name: asked.append(name) or Weights)
    logs = []
    model = models.create_from("mobilenet_v3_small_minimal", 3, 4, weights="DEFAULT", log=logs.append)
    assert asked == ["mobilenet_v3_small"]
    assert torch.equal(model.net.features[4].block[0][0].weight, source["features.4.block.0.0.weight"])
    assert any("tensors of torchvision's mobilenet_v3_small that mobilenet_v3_small_minimal has no layer for" in m
               for m in logs)
