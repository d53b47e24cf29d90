"""`compress -c smoke all` end to end (every stage, ending with the benchmark table), then fully skipped."""
from __future__ import annotations

import json
import time

import pytest

from pipeline.run import runner


@pytest.mark.slow
def test_smoke_all_then_everything_skipped(cli, smoke_run, tmp_path):
    result = cli(*smoke_run, "all")
    assert result.exit_code == 0, result.output
    assert "recommended" in result.output and "torch_fp32" in result.output  # the table ends the run
    root = tmp_path / "run"
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["stages"]) == set(runner.available()) and "benchmark" in manifest["stages"]
    assert all(entry["seconds"] >= 0 for entry in manifest["stages"].values())
    doc = json.loads((root / "benchmark" / "results.json").read_text())
    rows = {r["artifact"]: r for r in doc["rows"]}
    assert all(rows[a]["status"] == "ok" for a in ("teacher_fp32", "student_alone_fp32", "torch_fp32", "onnx_fp32"))
    started = time.perf_counter()
    again = cli(*smoke_run, "all")
    assert again.exit_code == 0 and again.output.count("up to date, skipped") == len(runner.available())
    assert time.perf_counter() - started < 5
