"""adapt and distill end to end on a tiny smoke config, and their one-line errors for bad input."""
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from pipeline import config, models
from pipeline.errors import UserError
from pipeline.run.rundir import RunDir
from pipeline.run.runner import Context, Runner, load_stage

TINY = ["data.synthetic_train=128", "data.synthetic_test=64", "teacher.epochs=1", "student.epochs=1",
        "adapt.epochs=1", "student.batch_size=32", "adapt.batch_size=32", "teacher.batch_size=32"]


def _cfg(*extra):
    return config.load("smoke", [*TINY, *extra])


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    run = RunDir(tmp_path_factory.mktemp("run"))
    runner = Runner(_cfg(), run, Console(quiet=True))
    runner.run_all(runner.select(to="distill"))
    return run


@pytest.fixture
def untrained_teacher_run(tmp_path):
    """A run whose teacher stage left an (untrained) checkpoint: enough for the input checks."""
    from pipeline import data

    cfg = _cfg()
    ds = data.load(cfg.data, cfg.seed)
    net = models.create(cfg.teacher.arch, ds.channels, len(ds.classes), cfg.teacher.width)
    models.save_checkpoint(tmp_path / "teacher" / "model.pt", net, cfg.teacher.arch, cfg.teacher.width, ds.meta())
    return RunDir(tmp_path)


@pytest.mark.slow
def test_adapt_and_distill_write_their_files_and_metrics(done_run):
    root = done_run.root
    stages = done_run.manifest()["stages"]
    assert stages["adapt"]["metrics"]["stages"] == [1]
    assert 0 <= stages["adapt"]["metrics"]["adapted_teacher_top1"] <= 1
    state = torch.load(root / "adapt" / "adapted.pt", weights_only=True)
    assert state["stages"] == [1] and state["student_arch"] == "resnet8"
    m = stages["distill"]["metrics"]
    for key in ("method", "test_top1", "test_loss", "final_train_loss", "baseline_top1", "baseline_train_loss",
                "teacher_top1", "adapted_teacher_top1", "seconds_per_epoch", "baseline_seconds_per_epoch"):
        assert m[key] is not None, key
    assert m["method"] == "ama"
    for name in ("student", "baseline"):
        model, ckpt = models.load_model(root / "distill" / f"{name}.pt", expect_arch="resnet8")
        assert ckpt["meta"]["dataset"] == "synthetic"
        assert (root / "distill" / name / "metrics.jsonl").read_text().count("\n") == 1
    assert (root / "distill" / "curves.png").stat().st_size > 1000
    assert Runner(_cfg(), done_run, Console(quiet=True)).states(done_run.manifest())["distill"] == "done"


def _ctx(run, name, cfg):
    return Context(cfg, run, name, "fp", Console(quiet=True))


def test_teacher_of_another_architecture_is_refused(untrained_teacher_run):
    cfg = _cfg("teacher.arch=resnet14")
    with pytest.raises(UserError, match="holds a resnet8 but the config asks for resnet14"):
        load_stage("adapt").run(_ctx(untrained_teacher_run, "adapt", cfg))


def test_stage_out_of_range_is_refused(untrained_teacher_run):
    with pytest.raises(UserError, match="out of range"):
        load_stage("adapt").run(_ctx(untrained_teacher_run, "adapt", _cfg("adapt.stages=[4]")))


def test_adapted_module_of_another_student_is_refused(untrained_teacher_run):
    from pipeline import data
    from pipeline.distill import adaptive
    from pipeline.distill.loading import load_adapted_for, load_teacher

    run, cfg = untrained_teacher_run, _cfg()
    ds = data.load(cfg.data, cfg.seed)
    teacher = load_teacher(run.root / "teacher" / "model.pt", cfg, ds)
    wide = models.create("resnet8", 1, len(ds.classes), 1.0)
    torch.save(adaptive.build(teacher, wide, [1], 1, ds.size).adapter_state(), run.root / "adapted.pt")
    with pytest.raises(UserError, match="another teacher/student pair"):
        load_adapted_for(run.root / "adapted.pt", cfg, teacher, ds)


def test_missing_teacher_run_is_refused(tmp_path):
    with pytest.raises(UserError, match="compress teacher"):
        load_stage("distill").run(_ctx(RunDir(tmp_path), "distill", _cfg()))


@pytest.mark.slow
def test_cli_exit_code_2_and_nothing_lost(done_run):
    from pipeline.cli import app

    before = (done_run.root / "adapt" / "adapted.pt").read_bytes()
    args = ["-c", "smoke", "-r", str(done_run.root), *[a for t in TINY for a in ("--set", t)],
            "--set", "student.arch=nosuchnet", "distill"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "unknown model 'nosuchnet'" in result.output
    assert (done_run.root / "adapt" / "adapted.pt").read_bytes() == before


def test_without_a_student_alone_its_figures_are_none_not_the_distilled_students(tmp_path):
    """distill.baseline: false trains no student alone; the stage must not record the distilled student as one."""
    run = RunDir(tmp_path)
    console = Console(record=True, width=200)
    runner = Runner(_cfg("distill.baseline=false"), run, console)
    runner.run_all(runner.select(to="distill"))
    m = run.manifest()["stages"]["distill"]["metrics"]
    assert m["test_top1"] is not None
    assert m["baseline_top1"] is None and m["gain_top1"] is None and m["baseline_val_top1"] is None
    assert "no student alone beside it: distill.baseline is false" in console.export_text()
    assert not (tmp_path / "distill" / "baseline.pt").exists()


def test_a_method_without_the_module_takes_the_teachers_figure_not_a_stale_adapt_entrys(tmp_path):
    """After the teacher was retrained, distill with kd recorded the teacher's accuracy from the adapt entry of
    the earlier teacher (kd does not read adapt, so nothing reruns it)."""
    run = RunDir(tmp_path)
    for extra in ((), ("distill.method=kd", "teacher.lr=0.02")):
        runner = Runner(_cfg(*extra), run, Console(quiet=True))
        runner.run_all(runner.select(to="distill"))
    stages = run.manifest()["stages"]
    assert stages["adapt"]["metrics"]["teacher_top1"] != stages["teacher"]["metrics"]["test_top1"]  # stale
    assert stages["distill"]["metrics"]["teacher_top1"] == stages["teacher"]["metrics"]["test_top1"]
