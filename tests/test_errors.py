"""Bad input at the command line: usage errors, a full disk, SIGTERM, file modes."""
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import files
from pipeline.cli_errors import hoist_global_options as _hoist_global_options
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
COMPRESS = [sys.executable, "-m", "pipeline.cli"]


@pytest.mark.parametrize("args, message", [
    (["all", "--bogus"], "No such option: --bogus"),
    (["teachr"], "Did you mean 'teacher'?"),
    (["status", "--config"], "Option '--config' requires an argument"),
])
def test_usage_mistakes_are_click_usage_errors(cli, args, message):
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.output and message in result.output
    assert "internal error" not in result.output


def test_an_error_naming_a_path_with_brackets_prints_it_as_it_is(cli, tmp_path):
    """Rich would read '[train]' as a style (dropping it) and '[/old]' as a closing tag (crashing)."""
    path = tmp_path / "a[/old]" / "[train]" / "c.yaml"
    result = cli("-c", str(path), "status")
    assert result.exit_code == 2, result.output
    assert f"config '{path}' not found" in result.output


@pytest.mark.parametrize("key, stage", [("teacher.batch_size", "teacher"), ("student.batch_size", "distill")])
def test_a_batch_larger_than_the_training_set_names_the_key_to_lower(cli, tmp_path, key, stage):
    result = cli("-c", "smoke", "-r", str(tmp_path / "run"), "--set", f"{key}=4096", stage)
    assert result.exit_code == 2, result.output
    assert f"batch size 4096 is larger than the training set; lower {key}" in result.output


def test_compare_under_torchrun_says_to_run_it_alone(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; every rank would take the run's lock
    result = cli("-c", "smoke", "-r", str(tmp_path / "run"), "compare")
    assert result.exit_code == 2 and "run 'compress compare' without torchrun" in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_global_options_after_the_subcommand(cli, tmp_path):
    result = cli("config", "-c", "smoke", "--set", "teacher.epochs=3")
    assert result.exit_code == 0, result.output
    assert "epochs: 3" in result.output and "dataset: synthetic" in result.output
    assert _hoist_global_options(["all", "--force", "x", "-r=d", "--debug"]) == ["-r=d", "--debug", "all", "--force",
                                                                                 "x"]
    assert _hoist_global_options(["-c", "a", "all"]) == ["-c", "a", "all"]


def test_out_of_range_value_through_the_cli(cli, smoke_run):
    result = cli(*smoke_run, "--set", "teacher.epochs=-3", "teacher")
    assert result.exit_code == 2 and "'teacher.epochs' = -3 is out of range" in result.output


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError) as info:
        files.atomic_write(target, "new" * 1000)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_library_error_on_a_full_disk_counts_as_full(tmp_path, monkeypatch):
    Usage = type(files.shutil.disk_usage(tmp_path))
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: Usage(1 << 30, 1 << 30, 512))
    with pytest.raises(OSError) as info:
        with files.atomic_path(tmp_path / "model.pt") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("unexpected pos 102272 vs 102192")  # what torch.save says
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_cannot_happen_keeps_its_cause_on_a_nearly_full_or_pseudo_disk(tmp_path, monkeypatch):
    Usage = type(files.shutil.disk_usage(tmp_path))
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: Usage(1 << 30, 1 << 30, 512))
    with pytest.raises(UserError, match=r"model.pt \(Read-only file system\); pick another path"):
        with files.atomic_path(tmp_path / "model.pt") as tmp:
            raise OSError(errno.EROFS, "Read-only file system", str(tmp))
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: Usage(0, 0, 0))  # what /proc and /sys report
    with pytest.raises(RuntimeError, match="unexpected pos"):
        with files.atomic_path(tmp_path / "model.pt"):
            raise RuntimeError("unexpected pos 102272 vs 102192")


def test_full_disk_mid_stage_is_one_line_and_resumable(cli, smoke_run, tmp_path, monkeypatch):
    assert cli(*smoke_run, "teacher").exit_code == 0
    manifest = (tmp_path / "run/manifest.json").read_bytes()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(files.os, "fsync", full)
    result = cli(*smoke_run, "--set", "teacher.lr=0.05", "teacher")
    assert result.exit_code == 2, result.output
    assert "no space left for" in result.output and "free" in result.output and "Traceback" not in result.output
    assert (tmp_path / "run/manifest.json").read_bytes() == manifest
    assert not list((tmp_path / "run").rglob("*.tmp*"))
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    assert cli(*smoke_run, "--set", "teacher.lr=0.05", "teacher").exit_code == 0


def test_files_follow_the_umask(cli, smoke_run, tmp_path):
    assert cli(*smoke_run, "teacher").exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    for name in ("config.yaml", "manifest.json", "teacher/metrics.jsonl"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == expected, name


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c_and_resumes(tmp_path):
    args = [*COMPRESS, "-c", "smoke", "--set", "teacher.epochs=6", "-r", str(tmp_path / "run"), "teacher"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run/teacher/metrics.jsonl"
    deadline = time.time() + 120
    while not metrics.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "rerun the same command to resume" in err
    resumed = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from epoch" in resumed.stdout
    assert [json.loads(r)["epoch"] for r in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def test_an_unwritable_cache_dir_is_one_line_before_any_stage_trains(cli, smoke_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a file where the cache folder's parent should be: mkdir fails for root too
    result = cli(*smoke_run, "--cache-dir", str(blocker / "cache"), "all")
    assert result.exit_code == 2, result.output
    assert f"cannot write to run-cache folder {blocker / 'cache'}" in result.output
    assert "pick another with --cache-dir" in result.output
    assert not (tmp_path / "run" / "teacher").exists()
