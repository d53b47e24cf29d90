"""The CLI through Typer's CliRunner, and the run-directory guarantees behind it."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from console_text import squeeze

from pipeline.run.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
COMPRESS = [sys.executable, "-m", "pipeline.cli"]


def test_help_lists_the_commands(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("all", "status", "teacher", "config"):
        assert command in result.output


def test_bad_input_is_one_line_and_exit_2(cli, smoke_run, tmp_path):
    cases = [
        (["--set", "teacher.epoch=3", "teacher"], "did you mean 'teacher.epochs'"),
        (["--set", "teacher.arch=resnet21", "teacher"], "unknown model 'resnet21'"),
        (["--set", "data.dataset=fashion", "teacher"], "unknown data set 'fashion'"),
        (["all", "--force", "teachr"], "unknown stage 'teachr'"),
    ]
    for args, message in cases:
        result = cli(*smoke_run, *args)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cli("-c", "smoke", "-r", str(blocker / "run"), "teacher")
    assert result.exit_code == 2 and "cannot write to run directory" in result.output


def test_a_later_stage_typo_stops_the_run_before_the_teacher_trains(cli, smoke_run, tmp_path):
    cases = [
        ("student.arch=resnet8x", "student.arch: unknown model 'resnet8x' (did you mean 'resnet8'?)"),
        ("student.arch=mobilenet_v3_small", "set student.width: 1.0"),  # smoke's student width is 0.25
        ("distill.method=kdd", "unknown distillation method 'kdd'"),
        ("adapt.stages=[5]", "adapt.stages has 5, out of range"),
    ]
    for override, message in cases:
        result = cli(*smoke_run, "--set", override, "all")
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert not (tmp_path / "run" / "teacher").exists(), override


@pytest.mark.parametrize("name", ["smoke", "default", "paper", "photos", "study"])
def test_every_shipped_config_passes_the_preflight(name):
    from pipeline import config, preflight

    preflight.check(config.load(name), ["teacher", "adapt", "distill"])


def test_all_then_everything_skipped_and_status(cli, smoke_run, tmp_path):
    first = cli(*smoke_run, "all")
    assert first.exit_code == 0, first.output
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert manifest["stages"]["teacher"]["metrics"]["test_top1"] > 0.4  # 4 classes: chance is 0.25
    second = cli(*smoke_run, "all")
    assert second.exit_code == 0 and "teacher: up to date, skipped" in second.output
    status = cli(*smoke_run, "status")
    assert "done" in status.output and "missing" not in status.output
    stale = cli(*smoke_run, "--set", "teacher.lr=0.05", "status")
    assert "stale" in stale.output


def test_status_names_a_stage_the_config_does_not_use(cli, smoke_run):
    result = cli(*smoke_run, "--set", "distill.method=student", "status")
    assert result.exit_code == 0, result.output
    assert [line.split()[3] for line in result.output.splitlines() if line.startswith("│ adapt")] == ["not"]
    assert "not used" not in cli(*smoke_run, "status").output


def test_second_process_on_the_same_run_refuses(cli, smoke_run, tmp_path):
    with RunDir(tmp_path / "run").locked():
        result = cli(*smoke_run, "teacher")
    assert result.exit_code == 2 and f"pid {os.getpid()}" in result.output


def test_the_next_lock_removes_what_a_killed_run_left_in_its_scratch_folder(tmp_path):
    run = RunDir(tmp_path / "run")
    left = run.scratch() / "tflite-job-x" / "calibration0.npy"  # as a kill -9 in quantize leaves it
    left.parent.mkdir()
    left.write_bytes(b"0" * 64)
    (run.root / "teacher").mkdir()
    (run.root / "teacher" / "model.pt").write_bytes(b"kept")
    with run.locked():
        assert not left.parent.exists()
    assert (run.root / "teacher" / "model.pt").read_bytes() == b"kept"


def test_a_run_folder_named_with_brackets_prints_as_it_is(cli, tmp_path):
    """Rich reads '[x]' as a style (dropping it) and '[/old]' as a closing tag (crashing the command)."""
    run = tmp_path / "a[" / "old]" / "[x] run"
    result = cli("-c", "smoke", "-r", str(run), "all", "--to", "export")
    assert result.exit_code == 0, result.output
    assert squeeze(f"onnx_fp32: {run / 'export' / 'onnx_fp32.onnx'}") in squeeze(result.output)
    result = cli("-c", "smoke", "-r", str(run), "status")
    assert result.exit_code == 0, result.output
    assert squeeze(f"run-cache: {run / '.cache'}") in squeeze(result.output)


def test_mismatched_checkpoint_from_another_architecture(cli, smoke_run, tmp_path):
    from pipeline import models

    assert cli(*smoke_run, "teacher").exit_code == 0
    ckpt = tmp_path / "run/teacher/model.pt"
    with pytest.raises(Exception, match="holds a resnet8 but the config asks for resnet20"):
        models.load_model(ckpt, expect_arch="resnet20")
    ckpt.write_bytes(ckpt.read_bytes()[:500])  # truncated: the stage is stale and reruns, nothing crashes
    result = cli(*smoke_run, "status")
    assert "stale" in result.output
    assert cli(*smoke_run, "teacher").exit_code == 0
    models.load_model(ckpt, expect_arch="resnet8")


def _wait_for_epochs(path: Path, n: int, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"training never reached epoch {n}")


def test_kill_9_mid_training_resumes_from_the_last_epoch(tmp_path):
    args = ["-c", "smoke", "--set", "teacher.epochs=5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = subprocess.run([*COMPRESS, *args, "-r", str(tmp_path / "ref"), "teacher"], cwd=ROOT, env=env,
                               capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "run"
    proc = subprocess.Popen([*COMPRESS, *args, "-r", str(run), "teacher"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_epochs(run / "teacher/metrics.jsonl", 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "teacher/model.pt").exists()
    resumed = subprocess.run([*COMPRESS, *args, "-r", str(run), "teacher"], cwd=ROOT, env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from epoch" in resumed.stdout
    rows = [json.loads(line) for line in (run / "teacher/metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (tmp_path / "ref/teacher/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    # a resumed run continues exactly where it stopped: same losses and the same final weights
    assert [r["train_loss"] for r in rows] == pytest.approx([r["train_loss"] for r in ref_rows], rel=1e-5)
    a = torch.load(run / "teacher/model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ref/teacher/model.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
