"""The adaptive module, the distillation methods and the teacher-output cache, on tiny synthetic tensors."""
import itertools

import pytest
import torch
from torch import nn

from pipeline import config, data, models
from pipeline.config import DistillConfig
from pipeline.data import synthetic
from pipeline.distill import adaptive, losses
from pipeline.distill import methods as distillers
from pipeline.distill.base import TargetCache
from pipeline.errors import UserError

SIZE = 16
PAIR_SIZE, PAIR_WIDTH = 8, 0.1  # the pair matrix only checks shapes: the smallest nets that keep 3 stages


@pytest.fixture(scope="module")
def nets():
    """Every registered model at a small width, with its stage maps for one batch."""
    torch.manual_seed(0)
    out = {}
    for name in models.CIFAR_NETS:
        net = models.create(name, 1, 5, width=PAIR_WIDTH).eval()
        with torch.no_grad():
            _, maps = net.forward_maps(torch.randn(2, 1, PAIR_SIZE, PAIR_SIZE))
        out[name] = (net, [m.shape for m in maps])
    return out


def _check_pairs(nets, pairs):
    x = torch.randn(2, 1, PAIR_SIZE, PAIR_SIZE)
    for t_name, s_name in pairs:
        (teacher, t_shapes), (student, s_shapes) = nets[t_name], nets[s_name]
        adapted = adaptive.build(teacher, student, [0, 1, 2], 1, PAIR_SIZE).eval()
        with torch.no_grad():
            logits, hints = adapted.forward_hints(x, projections := {})
        assert logits.shape == (2, 5), (t_name, s_name)
        for i in range(3):
            assert hints[i].shape == s_shapes[i], (t_name, s_name, i)
            assert projections[i].shape == t_shapes[i], (t_name, s_name, i)


def test_module_shapes_every_model_as_teacher_and_as_student(nets):
    _check_pairs(nets, {(name, "resnet8") for name in nets} | {("resnet20", name) for name in nets})


@pytest.mark.slow
def test_module_shapes_for_every_registered_pair(nets):
    _check_pairs(nets, itertools.product(nets, nets))


class _Plain(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, stride, 1)

    def forward(self, x):
        return self.conv(x)


def _net(strides):
    return models.StagedNet(nn.Conv2d(1, 4, 3, 1, 1), [_Plain(s) for s in strides], [4] * len(strides), 5)


def test_pairs_that_cannot_be_aligned_are_clear_errors():
    teacher = models.create("resnet8", 1, 5, width=0.25)  # maps 16, 8, 4 px at SIZE 16
    with pytest.raises(UserError, match="adapt.stages has 0, whose 16x16 map no student stage has"):
        adaptive.build(teacher, _net([2, 2, 2]), [0], 1, SIZE)  # student maps 8, 4, 2 px
    with pytest.raises(UserError, match="share no map resolution"):
        adaptive.build(teacher, _net([32]), [1], 1, SIZE)
    with pytest.raises(UserError, match="out of range"):
        adaptive.build(teacher, models.create("resnet8", 1, 5, width=0.25), [3], 1, SIZE)
    with pytest.raises(UserError, match="empty"):
        adaptive.build(teacher, models.create("resnet8", 1, 5, width=0.25), [], 1, SIZE)


def test_stages_pair_by_resolution_not_index():
    teacher = models.create("resnet8", 1, 5, width=0.25)
    assert adaptive.build(teacher, _net([2, 2, 2]), [1, 2], 1, SIZE).student_stages == {1: 0, 2: 1}
    assert adaptive.build(teacher, _net([1, 2]), [1], 1, SIZE).student_stages == {1: 1}  # fewer stages is fine


def test_unknown_method_names_the_closest():
    with pytest.raises(UserError, match="did you mean 'fitnets'"):
        distillers.check("fitnet")


def _dataset(n=64):
    x, y = synthetic.synthetic_images(n, 3, SIZE, 1, seed=1)
    return data.Dataset("synthetic", x, y, x[:16], y[:16], ["a", "b", "c"])


def test_cache_finds_rows_by_content_and_misses_unknown_images():
    ds = _dataset()
    cache = TargetCache(ds.train_x, ds.mean, ds.std, {"v": torch.arange(64.0)[:, None]})
    idx = torch.tensor([5, 0, 63, 17])
    hit = cache.lookup(ds.normalize(ds.train_x[idx]))
    assert hit["v"].flatten().tolist() == idx.float().tolist()
    other = ds.train_x[idx].clone()
    other[0, 0, 0, 0] ^= 1  # one pixel off: must not be taken for the cached image
    assert cache.lookup(ds.normalize(other)) is None
    assert (cache.hits, cache.misses) == (1, 1)


@pytest.mark.parametrize("method", list(distillers.METHODS))
def test_every_method_trains_the_student_only_and_cached_equals_live(method):
    ds = _dataset()
    torch.manual_seed(0)
    teacher = models.create("resnet8", 1, 3, width=0.5).eval()
    student = models.create("resnet8", 1, 3, width=0.25)
    source = adaptive.build(teacher, student, [1], 1, SIZE) if method == "ama" else teacher
    task = distillers.create(method, student, source, DistillConfig(), [1], (1, SIZE))
    task.setup(ds, torch.device("cpu"), augment="none", channels_last=False)
    task.teacher_precision = "fp32"
    task.train()
    assert task.teacher is None or not task.teacher.training
    x, y = ds.normalize(ds.train_x[:8]), ds.train_y[:8]
    torch.manual_seed(1)
    loss, logits = task(x, y)
    assert logits.shape == (8, 3) and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in (task.teacher.parameters() if task.teacher is not None else []))
    assert any(p.grad is not None for p in student.parameters())
    if task.teacher is not None:  # the cached targets (bf16 maps) give nearly the live loss
        assert task.cache is not None and task.cache.hits == 1
        cached = task.cache
        task.cache = None
        live, _ = task(x, y)
        task.cache = cached
        assert live.item() == pytest.approx(loss.item(), rel=0.05)


def test_joint_ama_trains_module_and_does_not_cache():
    ds = _dataset()
    teacher = models.create("resnet8", 1, 3, width=0.5).eval()
    student = models.create("resnet8", 1, 3, width=0.25)
    adapted = adaptive.build(teacher, student, [1], 1, SIZE)
    task = distillers.create("ama", student, adapted, DistillConfig(joint=True), [1], (1, SIZE))
    task.setup(ds, torch.device("cpu"), augment="none", channels_last=False)
    assert task.cache is None
    task.train()
    loss, _ = task(ds.normalize(ds.train_x[:8]), ds.train_y[:8])
    loss.backward()
    assert all(p.grad is not None for p in task.teacher.adapters.parameters())
    assert all(p.grad is None for p in task.teacher.teacher.parameters())


@pytest.mark.parametrize("joint", [False, True])
def test_ama_kd_target_picks_whose_logits_the_kl_follows(joint):
    ds = _dataset()
    torch.manual_seed(0)
    teacher = models.create("resnet8", 1, 3, width=0.5).eval()
    student = models.create("resnet8", 1, 3, width=0.25)
    adapted = adaptive.build(teacher, student, [1], 1, SIZE).eval()
    x, y = ds.normalize(ds.train_x[:8]), ds.train_y[:8]
    with torch.no_grad():
        original, adapted_logits = teacher(x), adapted(x)
    assert not torch.allclose(original, adapted_logits)  # the two readings really differ
    seen = {}
    for target in ("original", "adapted"):
        task = distillers.create("ama", student, adapted, DistillConfig(kd_target=target, joint=joint), [1],
                                 (1, SIZE))
        task.eval()
        task.loss = lambda x_, y_, targets, t=target: (seen.__setitem__(t, targets), (torch.zeros(()), None))[1]
        task(x, y)
        assert set(seen[target]) == {"logits", "hint1"}
    assert torch.allclose(seen["original"]["logits"], original, atol=1e-5)
    assert torch.allclose(seen["adapted"]["logits"], adapted_logits, atol=1e-5)
    assert torch.allclose(seen["original"]["hint1"], seen["adapted"]["hint1"])  # hints always from the module
    with pytest.raises(UserError, match="'distill.kd_target' = 'teacher' is not allowed"):
        config.load("smoke", ["distill.kd_target=teacher"])


def _calibrate(adapted, x):
    """BatchNorm statistics of one batch, so an untrained teacher and module keep their maps' scale."""
    for m in adapted.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.train()
    with torch.no_grad():
        adapted.forward_hints(x)
    adapted.eval()


@pytest.mark.parametrize("stages", [[0], [1], [1, 2], [0, 2]])
def test_route_of_the_modules_own_map_gives_the_adapted_teachers_logits(stages):
    torch.manual_seed(0)
    teacher = models.create("resnet8", 1, 3, width=0.5).eval()
    student = models.create("resnet8", 1, 3, width=0.25)
    adapted = adaptive.build(teacher, student, stages, 1, SIZE)
    x = torch.randn(4, 1, SIZE, SIZE)
    _calibrate(adapted, x)
    with torch.no_grad():
        logits, hints = adapted.forward_hints(x)
        for i in stages:
            assert torch.allclose(adapted.route(i, hints[i]), logits, atol=1e-5), i
            assert torch.allclose(adapted.route(i, hints[i].flip(0)), logits.flip(0), atol=1e-5), i  # per image
            assert not torch.allclose(adapted.route(i, torch.zeros_like(hints[i])), logits, atol=1e-2), i


@pytest.mark.parametrize("stages", [[0], [1], [1, 2], [0, 2]])
def test_one_pass_gives_the_original_logits_and_the_modules_hints(stages):
    """What kd_target: original caches, computed with the shared prefix run once, equals the two full passes."""
    torch.manual_seed(0)
    teacher = models.create("resnet8", 1, 3, width=0.5).eval()
    adapted = adaptive.build(teacher, models.create("resnet8", 1, 3, width=0.25), stages, 1, SIZE)
    x = torch.randn(4, 1, SIZE, SIZE)
    _calibrate(adapted, x)
    with torch.no_grad():
        logits, hints = adapted.original_logits_and_hints(x)
        assert torch.equal(logits, teacher(x))
        full = adapted.forward_hints(x)[1]
    assert sorted(hints) == sorted(full) == stages
    for i in stages:
        assert torch.equal(hints[i], full[i]), i


def test_route_weight_adds_the_kl_of_the_teacher_run_on_the_students_map():
    ds = _dataset()
    torch.manual_seed(0)
    teacher = models.create("resnet8", 1, 3, width=0.5).eval()
    student = models.create("resnet8", 1, 3, width=0.25)
    adapted = adaptive.build(teacher, student, [1], 1, SIZE)
    x, y = ds.normalize(ds.train_x[:8]), ds.train_y[:8]
    _calibrate(adapted, x)
    grads, totals = {}, {}
    for weight in (0.0, 0.5):
        # live fp32 targets: a cache filled in setup would hold them at the machine's precision (bf16 where the
        # CPU computes it in hardware), half a percent from the fp32 sum below
        task = distillers.create("ama", student, adapted, DistillConfig(route_weight=weight, cache=False), [1],
                                 (1, SIZE))
        task.setup(ds, torch.device("cpu"), augment="none", channels_last=False)
        task.teacher_precision = "fp32"
        task.train()
        student.zero_grad()
        loss, _ = task(x, y)
        loss.backward()
        assert all(p.grad is None for p in adapted.parameters())  # the teacher and the fixed module stay put
        totals[weight], grads[weight] = loss.item(), next(student.parameters()).grad.clone()
    student.train()
    with torch.no_grad():
        _, maps = student.forward_maps(x)
        soft = teacher(x)  # kd_target: original
        expected = 0.5 * losses.kd_loss(adapted.route(1, maps[1]), soft, 4.0).item()
    assert totals[0.5] - totals[0.0] == pytest.approx(expected, rel=1e-3)
    assert expected > 1e-3 and not torch.allclose(grads[0.0], grads[0.5])


@pytest.mark.parametrize("method", list(distillers.METHODS))
def test_student_label_smoothing_smooths_the_label_term_of_every_method_and_nothing_else(method):
    """student.label_smoothing reaches the student's cross-entropy with the labels (it was ignored before):
    the loss moves by exactly ce_weight x (smoothed - plain cross-entropy), the teacher's terms stay."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    teacher = models.create("resnet8", 1, 3, width=0.5).eval()
    student = models.create("resnet8", 1, 3, width=0.25).eval()  # eval: the two forward passes see the same net
    source = adaptive.build(teacher, student, [1], 1, SIZE) if method == "ama" else teacher
    dcfg = DistillConfig(cache=False)
    x, y = torch.randn(8, 1, SIZE, SIZE), torch.randint(0, 3, (8,))
    got = {}
    for ls in (0.0, 0.2):
        torch.manual_seed(1)  # fitnets' regressors are created here: the same for both
        task = distillers.create(method, student, source, dcfg, [1], (1, SIZE), label_smoothing=ls)
        task.teacher_precision = "fp32"
        with torch.no_grad():
            got[ls] = task(x, y)
    logits = got[0.0][1]
    weight = 1.0 if method == "student" else dcfg.ce_weight
    expected = weight * (F.cross_entropy(logits, y, label_smoothing=0.2) - F.cross_entropy(logits, y))
    assert (got[0.2][0] - got[0.0][0]).item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    assert abs(expected.item()) > 1e-3  # the setting does something here


def test_train_student_hands_the_configs_label_smoothing_to_the_method(monkeypatch):
    from pipeline.distill import train as distill_train

    seen = []

    def create(*args, **kwargs):
        seen.append(kwargs.get("label_smoothing"))
        raise RuntimeError("stop here")

    monkeypatch.setattr(distill_train.distillers, "create", create)
    cfg = config.load("smoke", ["student.label_smoothing=0.1", "data.synthetic_train=64", "data.synthetic_test=32"])
    ds = data.load(cfg.data, cfg.seed)
    with pytest.raises(RuntimeError, match="stop here"):
        distill_train.train_student(cfg, "student", 0, ds, None, None, None, fingerprint="f", console=None,
                                    label="student")
    assert seen == [0.1]
