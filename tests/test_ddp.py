"""The same command under torchrun: DistributedDataParallel on CPU with gloo and two processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.train import probe

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "pipeline.cli", "-c", "smoke"]


def test_teacher_under_torchrun_two_processes(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*TORCHRUN, "-r", str(run), "--set", "teacher.epochs=4",
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
    cmd = [*TORCHRUN, "-r", str(run), "--set", "teacher.epochs=1",
           "--set", "teacher.batch_size=32", "--set", "teacher.precision=auto", "teacher"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run / "manifest.json").read_text())["stages"]["teacher"]["metrics"]
    assert metrics["precision"] == metrics["precision_probe"]["choice"]
    assert proc.stdout.count("training in") == 1  # one probe line: rank 0's
    # rank 0 alone stores: one record for this net, plus, only where bf16 measured EMULATED times slower (timing
    # decides, so either is right), one machine mark that agrees with it
    records = [json.loads(f.read_text()) for f in (tmp_path / "xdg/compress/precision").glob("*.json")]
    per_net = [r for r in records if "net" in r["key"]]
    marks = [r for r in records if "verdict" in r["key"]]
    assert len(per_net) == 1 and len(per_net) + len(marks) == len(records)
    assert per_net[0]["choice"] == metrics["precision"]
    assert len(marks) <= 1
    if marks:
        assert marks[0]["choice"] == "fp32" and marks[0]["bf16_step_s"] >= probe.EMULATED * marks[0]["fp32_step_s"]


HOOK = '''
import os
if os.environ.get("RANK"):  # a torchrun worker: log each stage it runs, then run it
    from pipeline.run import runner

    run_stage = runner.Runner._run_stage

    def logged(self, name, fingerprint):
        with open(os.environ["STAGE_LOG"], "a") as fh:
            fh.write(f"{os.environ['RANK']} {name}\\n")
        return run_stage(self, name, fingerprint)

    runner.Runner._run_stage = logged
'''


@pytest.mark.slow
def test_under_torchrun_rank_0_alone_runs_the_stages_after_training(tmp_path):
    """Including the QAT fine-tune, which rank 0 trains by itself (no DistributedDataParallel without the others)."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook/sitecustomize.py").write_text(HOOK)
    log = tmp_path / "stages.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path / "hook"), "STAGE_LOG": str(log)}
    cmd = [*TORCHRUN, "-r", str(tmp_path / "run"), "--set", "teacher.epochs=1",
           "--set", "student.epochs=1", "--set", "quantize.qat=on", "--set", "quantize.tflite=[]",
           "all", "--to", "quantize"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran = sorted(log.read_text().split("\n")[:-1])
    assert ran == sorted([f"{rank} {stage}" for rank in "01" for stage in ("teacher", "adapt", "distill")]
                         + ["0 export", "0 simplify", "0 quantize"])
    stages = json.loads((tmp_path / "run/manifest.json").read_text())["stages"]
    assert sorted(stages) == ["adapt", "distill", "export", "quantize", "simplify", "teacher"]
    assert stages["quantize"]["metrics"]["artifacts"]["onnx_int8_qat"]["status"] == "ok"


def test_a_stage_failing_under_torchrun_leaves_no_scratch_folder_of_a_rank(tmp_path):
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "tmp")}
    cmd = [*TORCHRUN, "-r", str(tmp_path / "run"), "--set", "teacher.batch_size=4096",
           "teacher"]  # fails in training, after rank 1 wrote the data report into its scratch folder
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "lower teacher.batch_size" in proc.stderr, proc.stderr[-2000:]
    assert not [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("compress-rank")]
