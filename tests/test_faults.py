"""kill -9 at seeded random moments in every stage of `compress all`; the resumed run must equal an
uninterrupted one (every accuracy, every artifact's status)."""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.run.runner import ORDER

ROOT = Path(__file__).resolve().parent.parent
COMPRESS = [sys.executable, "-m", "pipeline.cli", "-c", "smoke"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "100"}
OURS = ("compress-eval-", "compress-bench-", "tflite-job-")  # the prefixes of the stages' temporary folders


def _start(run: Path):
    proc = subprocess.Popen([*COMPRESS, "-r", str(run), "all"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines


def _kill_during(run: Path, stage: str, delay: float, timeout: float = 300) -> str:
    """Start `compress all`, wait for ``stage`` to begin, let it work ``delay`` s, then SIGKILL the process
    group (the runtime children too). Returns what happened."""
    proc, lines = _start(run)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(f" {stage} " in line and "─" in line for line in lines):
            time.sleep(delay)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return "killed"
            break
        if any(f"{stage}: up to date" in line for line in lines):
            break
        time.sleep(0.02)
    proc.wait(timeout=timeout)
    return f"finished before the kill (rc {proc.returncode})"


def _result(run: Path) -> dict:
    """What must not depend on interruptions: training metrics, artifact statuses, every accuracy."""
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    training = {s: {k: v for k, v in stages[s]["metrics"].items() if "top1" in k or "loss" in k}
                for s in ("teacher", "adapt", "distill")}
    quantize = {k: (v.get("status"), v.get("drop_pts")) for k, v in stages["quantize"]["metrics"]
                .get("artifacts", {}).items()}
    rows = json.loads((run / "benchmark/results.json").read_text())["rows"]
    return {"training": training, "quantize": quantize,
            "benchmark": {r["artifact"]: (r["status"], r.get("top1")) for r in rows}}


@pytest.mark.slow
def test_kill_9_in_every_stage_then_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    (tmp_path / "system-tmp").mkdir()
    monkeypatch.setitem(ENV, "TMPDIR", str(tmp_path / "system-tmp"))
    reference = subprocess.run([*COMPRESS, "-r", str(tmp_path / "ref"), "all"], cwd=ROOT, env=ENV,
                               capture_output=True, text=True)
    assert reference.returncode == 0, reference.stdout[-2000:]
    seconds = {s: e["seconds"] for s, e in
               json.loads((tmp_path / "ref/manifest.json").read_text())["stages"].items()}
    rng = random.Random(20261126)
    run, log = tmp_path / "run", {}
    for stage in ORDER:
        log[stage] = _kill_during(run, stage, rng.uniform(0.05, 0.9) * seconds[stage])
    assert list(log.values()).count("killed") >= 5, log  # most kills landed inside their stage
    final = subprocess.run([*COMPRESS, "-r", str(run), "all"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert final.returncode == 0, final.stdout[-2000:]
    got, want = _result(run), _result(tmp_path / "ref")
    assert got["quantize"] == want["quantize"] and got["benchmark"] == want["benchmark"], log
    for stage, metrics in want["training"].items():
        assert got["training"][stage] == pytest.approx(metrics, rel=1e-6), (stage, log)
    # the killed stages' temporary files stayed inside the run, and the resumed run removed them
    assert not [p.name for p in (tmp_path / "system-tmp").iterdir() if p.name.startswith(OURS)], log
    assert not list((run / ".tmp").glob("*")), log
    status = subprocess.run([*COMPRESS, "-r", str(run), "status"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert "stale" not in status.stdout and "missing" not in status.stdout
