"""The same command under torchrun: DistributedDataParallel on CPU with gloo and two processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_teacher_under_torchrun_two_processes(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "pipeline.cli", "-c", "smoke", "-r", str(run), "--set", "teacher.epochs=4",
           "--set", "teacher.batch_size=32", "teacher"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((run / "manifest.json").read_text())
    entry = manifest["stages"]["teacher"]
    assert entry["metrics"]["test_top1"] > 0.4  # 4 classes: chance is 0.25
    # rank 0 alone writes: one manifest entry, one log line per epoch, a loadable checkpoint
    assert len((run / "teacher/metrics.jsonl").read_text().splitlines()) == 4
    from pipeline import models
    models.load_model(run / "teacher/model.pt", expect_arch="resnet8")


def test_auto_precision_under_torchrun_is_rank_0s_probe(tmp_path):
    """Rank 0 alone probes and broadcasts its choice (ranks choosing apart would deadlock or diverge)."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "pipeline.cli", "-c", "smoke", "-r", str(run), "--set", "teacher.epochs=1",
           "--set", "teacher.batch_size=32", "--set", "teacher.precision=auto", "teacher"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run / "manifest.json").read_text())["stages"]["teacher"]["metrics"]
    assert metrics["precision"] == metrics["precision_probe"]["choice"]
    assert proc.stdout.count("training in") == 1  # one probe line: rank 0's
    assert len(list((tmp_path / "xdg/compress/precision").glob("*.json"))) == 1
