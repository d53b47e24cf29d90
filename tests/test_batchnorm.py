"""BatchNorm statistics that match the weights (pipeline/train/batchnorm.py): a MobileNetV3 (BatchNorm momentum 0.01)
trained a few steps is reported with recomputed statistics, the same after a kill -9 and resume, the same on
every DDP rank, and the report's guard fires on a model whose statistics were left stale."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from killing import kill_after_epoch as kill_after_epoch_of
from rich.console import Console
from torch import nn

from pipeline import data, models
from pipeline.config import DataConfig, TrainConfig
from pipeline.train import batchnorm
from pipeline.train.engine import Classifier, fit
from pipeline.train.evaluate import evaluate

ROOT = Path(__file__).resolve().parent.parent
DATA = DataConfig(dataset="synthetic", synthetic_train=512, synthetic_test=128, synthetic_channels=3,
                  synthetic_size=32, val_fraction=0.25)


def _train(tmp_path, bn_images: int, epochs: int = 2):
    ds = data.load(DATA)
    torch.manual_seed(0)
    model = models.create("mobilenet_v3_small", 3, 4, 1.0)
    cfg = TrainConfig(arch="mobilenet_v3_small", epochs=epochs, batch_size=32, lr=0.05, precision="fp32",
                      channels_last=False, bn_recalibration_images=bn_images)
    result = fit(Classifier(model), model, ds, cfg, tmp_path, seed=0, fingerprint="f", console=Console(quiet=True))
    return ds, model, result


def _reference_val(ds, state: dict) -> float:
    """Validation top-1 of ``state`` after torch's own update_bn over every training image (another implementation
    and four times the images the stage used)."""
    model = models.create("mobilenet_v3_small", 3, 4, 1.0)
    model.load_state_dict(state)
    loader = [ds.normalize(ds.train_x[i:i + 32]) for i in range(0, len(ds.train_y), 32)]
    torch.optim.swa_utils.update_bn(loader, model)
    return evaluate(model, ds, "val", batch_size=256)["val_top1"]


def _last_model(out_dir) -> dict:
    """The network's weights and statistics in the last epoch's checkpoint (the model a stage hands on)."""
    task = torch.load(out_dir / "last.pt", weights_only=True)["task"]
    return {k.removeprefix("model."): v for k, v in task.items()}


def test_reported_accuracy_is_that_of_the_recalibrated_checkpoint(tmp_path):
    ds, model, result = _train(tmp_path / "on", bn_images=128)
    reported = result.history[-1]["val_top1"]
    assert reported == pytest.approx(_reference_val(ds, _last_model(tmp_path / "on")), abs=0.02)
    assert all(h["bn_seconds"] > 0 for h in result.history)
    assert not result.bn_check["stale"]
    # the same training without recalibration reports a network that was never trained: the check above can fail
    ds, model, stale = _train(tmp_path / "off", bn_images=0)
    assert _reference_val(ds, _last_model(tmp_path / "off")) - stale.history[-1]["val_top1"] > 0.2
    assert stale.bn_check["stale"]


def _bn_buffers(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


SCRIPT = """
import sys, torch
from rich.console import Console
sys.path[:0] = [{root!r}, {root!r} + "/tests"]  # the pipeline, and the tests' own helpers
from test_batchnorm import DATA
from pipeline import data
from pipeline import models
from pipeline.config import TrainConfig
from pipeline.train.engine import Classifier, fit
torch.set_num_threads(1)
ds = data.load(DATA)
torch.manual_seed(0)
model = models.create("mobilenet_v3_small", 3, 4, 1.0)
cfg = TrainConfig(arch="mobilenet_v3_small", epochs=3, batch_size=32, lr=0.05, precision="fp32",
                  channels_last=False, bn_recalibration_images=128)
from pathlib import Path
fit(Classifier(model), model, ds, cfg, Path({out!r}), seed=0, fingerprint="f", console=Console(quiet=True),
    on_epoch=lambda row: print("epoch", row["epoch"], flush=True))
"""


def _run_fit(out: Path, kill_after_epoch: int | None = None) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(root=str(ROOT), out=str(out))], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    if kill_after_epoch is not None:
        kill_after_epoch_of(proc, out / "last.pt", kill_after_epoch)
    proc.wait(timeout=300)
    if kill_after_epoch is None:
        assert proc.returncode == 0


def test_kill_9_and_resume_gives_the_same_statistics(tmp_path):
    _run_fit(tmp_path / "whole")
    _run_fit(tmp_path / "cut", kill_after_epoch=2)
    cut = torch.load(tmp_path / "cut/last.pt", weights_only=True)
    assert cut["epoch"] == 1  # killed during the third epoch
    _run_fit(tmp_path / "cut")
    want = _bn_buffers(torch.load(tmp_path / "whole/last.pt", weights_only=True)["task"])
    got = _bn_buffers(torch.load(tmp_path / "cut/last.pt", weights_only=True)["task"])
    assert want and all(torch.equal(got[k], v) for k, v in want.items())


def _ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten())
    images = torch.randn(256, 3, 8, 8) * 3 + 1
    batchnorm.recalibrate(model, images, model, n=256, batch_size=32, seed=0, rank=rank, world=world)
    torch.save(_bn_buffers(model.state_dict()), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_every_ddp_rank_gets_the_statistics_one_process_computes(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_rank, args=(2, port, str(tmp_path)), nprocs=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten())
    images = torch.randn(256, 3, 8, 8) * 3 + 1
    batchnorm.recalibrate(model, images, model, n=256, batch_size=32, seed=0)
    one = _bn_buffers(model.state_dict())
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for k, v in one.items():
        assert torch.equal(ranks[0][k], ranks[1][k])
        assert torch.allclose(ranks[0][k], v, atol=1e-5)
    assert one["1.running_mean"].abs().max() > 0.1  # the statistics moved from their reset values


def test_a_frozen_teacher_inside_the_task_keeps_its_statistics():
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    student = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    before = teacher[1].running_mean.clone()
    both = nn.Sequential(teacher, student)
    images = torch.randn(64, 3, 8, 8) + 2
    batchnorm.recalibrate(both, images, lambda x: (teacher(x), student(x)), n=64, batch_size=16, seed=0)
    assert torch.equal(teacher[1].running_mean, before)
    assert student[1].running_mean.abs().max() > 0.5


def test_the_guard_fires_on_stale_statistics_and_the_report_makes_no_claim_from_them():
    from pipeline.report import markdown
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 2))
    x = torch.randn(256, 3, 8, 8)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    x = x * 5 + 3  # far from the reset statistics (mean 0, variance 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
        opt.step()
    model[1].reset_running_stats()  # deliberately stale
    chk = batchnorm.check(model, x, y, lambda m, b: m(b), batch_size=64)
    assert chk["stale"] and chk["batch_top1"] - chk["eval_top1"] > 0.05
    model.train()
    batchnorm.recalibrate(model, x, model, n=256, batch_size=64, seed=0)
    assert not batchnorm.check(model, x, y, lambda m, b: m(b), batch_size=64)["stale"]

    rows = [{"artifact": a, "device": "host", "status": "ok", "top1": t, "precision": "fp32"}
            for a, t in (("teacher_fp32", 0.87), ("student_alone_fp32", 0.55), ("torch_fp32", 0.85))]
    rows[1]["bn_check"] = chk
    lines = markdown.story(rows, "host")
    assert any("student trained alone: its BatchNorm statistics do not match" in line for line in lines)
    assert not any("Distillation:" in line for line in lines)
    rows[1]["bn_check"] = {**chk, "stale": False}
    text = " ".join(markdown.story(rows, "host"))
    assert "distillation gained 30.00 points" in text


def test_a_net_without_batchnorm_is_not_run_twice_for_nothing():
    calls = []
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 2, (32,))
    assert batchnorm.check(model, x, y, lambda m, b: calls.append(1) or m(b), batch_size=16) == {}
    assert not calls


def test_the_distillation_line_says_plainly_when_distillation_cost_accuracy():
    from pipeline.report import markdown
    line = markdown.distillation(85.21, 88.43, 86.99)[0]
    assert "distillation cost 1.44 points" in line and "teacher is no better than the student alone" in line
    assert "no better" not in markdown.distillation(90.0, 88.0, 89.0)[0]


def test_the_distillation_line_says_when_one_seed_cannot_tell_the_gain_from_chance():
    from pipeline.report import markdown
    # the photos run of 2026-12-06 (1198 test images): -1.59 points, one standard error of the difference 1.44
    line = markdown.distillation(88.90, 86.23, 84.64, images=1198)[0]
    assert "about 1.44 points" in line and "cannot tell it from chance" in line
    # the default run (10000 images): +0.88 points against a standard error of 0.39: beyond two, no caveat
    assert "chance" not in markdown.distillation(92.59, 91.49, 92.37, images=10000)[0]
    assert "chance" not in markdown.distillation(92.59, 91.49, 92.37)[0]  # no image count: nothing claimed
