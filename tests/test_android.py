"""bench-android against a stand-in adb that replays real benchmark_model output."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from deploy import android
from deploy.runner import machine_info, results_doc
from pipeline import config as config_mod
from pipeline.errors import UserError
from pipeline.export import inventory
from pipeline.report import android as android_report
from pipeline.report import results, write
from pipeline.run.rundir import RunDir

FIXTURES = Path(__file__).parent / "fixtures"

FAKE_ADB = """#!{python}
import os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_CALLS"], "a") as fh:
    fh.write(" ".join(args) + "\\n")
if args[0] == "-s":
    if args[1] not in os.environ.get("FAKE_ADB_DEVICES", "").split():
        sys.exit("error: device '" + args[1] + "' not found")
    args = args[2:]
if args[0] == "devices":
    print("List of devices attached")
    for serial in os.environ.get("FAKE_ADB_DEVICES", "").split():
        print(serial + "\\tdevice")
elif args[0] == "push":
    print(args[1] + ": 1 file pushed")
elif args[:2] == ["shell", "getprop"]:
    print({{"ro.product.model": "Pixel 7", "ro.soc.model": "Tensor G2", "ro.product.cpu.abi": "arm64-v8a",
           "ro.build.version.release": "14"}}.get(args[2], ""))
elif args[:2] == ["shell", "cat"]:
    print("0-7")
elif args[0] == "shell":
    sys.stdout.buffer.write(open(os.environ["FAKE_ADB_LOG"], "rb").read())
"""


def test_parse_newer_output_percentiles_and_memory():
    got = android.parse((FIXTURES / "benchmark_model_xnnpack.txt").read_text())
    lat = got["latency"]
    assert lat["runs"] == 1000  # the timed block, not the warm-up block (count=9)
    assert lat["p50_ms"] == pytest.approx(51.891) and lat["mean_ms"] == pytest.approx(63.7432)
    assert lat["p5_ms"] == pytest.approx(49.62) and lat["p95_ms"] == pytest.approx(68.628)
    assert lat["p90_ms"] is None and "p50_is_mean" not in lat
    assert got["init_ms"] == pytest.approx(119.515) and got["memory_delta_mb"] == pytest.approx(55.4961)


def test_parse_older_output_has_mean_only():
    got = android.parse((FIXTURES / "benchmark_model_old.txt").read_text())
    assert got["latency"]["p50_ms"] == pytest.approx(249.684) and got["latency"]["p50_is_mean"]
    assert got["peak_rss_mb"] == pytest.approx(138.809)


def test_parse_failure_quotes_the_error():
    with pytest.raises(UserError, match="Failed to allocate tensors"):
        android.parse((FIXTURES / "benchmark_model_failed.txt").read_text())


@pytest.fixture
def phone(tmp_path, monkeypatch):
    """A run with a tflite file and host results, and a stand-in adb first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable))
    adb.chmod(0o755)
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_CALLS", str(calls))
    monkeypatch.setenv("FAKE_ADB_DEVICES", "emulator-5554")
    monkeypatch.setenv("FAKE_ADB_LOG", str(FIXTURES / "benchmark_model_xnnpack.txt"))
    run = RunDir(tmp_path / "run")
    run.create()
    (run.stage_dir("quantize") / "tflite_int8.tflite").write_bytes(b"tflite bytes")
    host_row = {"artifact": "tflite_int8", "status": "ok", "top1": 0.9, "images": 100, "runtime": "tflite",
                "precision": "int8", "latency": {"one_thread": {"p50_ms": 0.2}}}
    doc = results_doc(inventory.run_info(run.root, run.manifest()), machine_info("host"), {}, [host_row])
    write.write_all(run.stage_dir("benchmark"), doc, 0.5)
    return run, calls


def test_bench_android_merges_into_the_report(phone):
    run, calls = phone
    cfg = config_mod.load("smoke")
    android_report.bench(run, cfg, cfg.android, [])
    device = json.loads(next((run.root / "benchmark" / "devices").glob("*.json")).read_text())
    results.validate(device, "device")
    row = device["rows"][0]
    assert row["status"] == "ok" and row["top1"] == 0.9 and row["accuracy_source"].startswith("host")
    assert row["latency"]["one_thread"]["p50_ms"] == pytest.approx(51.891)
    assert device["machine"]["device"] == "Pixel 7 (emulator-5554, xnnpack)" and device["machine"]["cores"] == 8
    log = calls.read_text()
    assert "push" in log and "--num_threads=1" in log and "--num_threads=4" in log and "--use_xnnpack=true" in log
    assert "Pixel 7" in (run.root / "benchmark" / "report.md").read_text()


def test_delegate_and_a_phone_that_measured_nothing(phone, monkeypatch, cli):
    """Every model failed: the command says why and exits 2, and no device of failed rows joins the report."""
    run, calls = phone
    monkeypatch.setenv("FAKE_ADB_LOG", str(FIXTURES / "benchmark_model_failed.txt"))
    result = cli("-c", "smoke", "-r", str(run.root), "--set", "android.delegate=gpu", "bench-android", "tflite_int8")
    assert result.exit_code == 2, result.output
    assert "no model was measured (tflite_int8: benchmark_model failed:" in result.output
    assert "allocate tensors" in result.output and len(result.output.strip().splitlines()) == 1
    assert "--use_gpu=true" in calls.read_text()
    assert not (run.root / "benchmark" / "devices").exists()


def test_each_delegate_is_a_device_of_its_own(phone, monkeypatch):
    """A gpu run replaced the xnnpack rows of the same phone, and no table said which delegate it was."""
    run, _ = phone
    for delegate, log in (("xnnpack", "benchmark_model_xnnpack.txt"), ("gpu", "benchmark_model_old.txt")):
        monkeypatch.setenv("FAKE_ADB_LOG", str(FIXTURES / log))
        cfg = config_mod.load("smoke", [f"android.delegate={delegate}"])
        android_report.bench(run, cfg, cfg.android, ["tflite_int8"])
    docs = [json.loads(p.read_text()) for p in sorted((run.root / "benchmark" / "devices").glob("*.json"))]
    assert [(d["machine"]["device"], d["rows"][0]["delegate"]) for d in docs] == [
        ("Pixel 7 (emulator-5554, gpu)", "gpu"), ("Pixel 7 (emulator-5554, xnnpack)", "xnnpack")]
    report = (run.root / "benchmark" / "report.md").read_text()
    assert "| Pixel 7 (emulator-5554, gpu) |" in report and "| Pixel 7 (emulator-5554, xnnpack) |" in report


def test_no_device_and_no_adb_are_one_line_errors(phone, monkeypatch, cli, tmp_path):
    run, _ = phone
    monkeypatch.setenv("FAKE_ADB_DEVICES", "")
    result = cli("-c", "smoke", "-r", str(run.root), "bench-android")
    assert result.exit_code == 2 and "no Android device attached" in result.output
    result = cli("-c", "smoke", "-r", str(run.root), "--set", "android.adb=no-such-adb", "bench-android")
    assert result.exit_code == 2 and "adb not found" in result.output
    assert not (run.root / "benchmark" / "devices").exists()  # nothing half-written


def test_an_adb_that_cannot_be_run_is_a_one_line_error(phone, cli, tmp_path):
    """An adb unzipped without its execute bit (or any other file) raised PermissionError: internal error."""
    run, _ = phone
    plain = tmp_path / "adb-no-x"
    plain.write_text("#!/bin/sh\n")
    result = cli("-c", "smoke", "-r", str(run.root), "--set", f"android.adb={plain}", "bench-android")
    assert result.exit_code == 2, result.output
    assert f"cannot run adb '{plain}': Permission denied" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_only_tflite_models(phone):
    run, _ = phone
    cfg = config_mod.load("smoke")
    with pytest.raises(UserError, match="tflite models only"):
        android_report.bench(run, cfg, cfg.android, ["onnx_fp32"])


def test_odd_phone_output(phone, monkeypatch, tmp_path):
    """A vendor log with bytes that are not UTF-8 still parses; a malformed number fails that model (here the only
    one, so nothing is merged and the earlier result stays)."""
    run, _ = phone
    good = (FIXTURES / "benchmark_model_xnnpack.txt").read_bytes()
    noisy = tmp_path / "noisy.txt"
    noisy.write_bytes(b"\xff\xfe vendor banner \x80\n" + good)
    monkeypatch.setenv("FAKE_ADB_LOG", str(noisy))
    cfg = config_mod.load("smoke")
    android_report.bench(run, cfg, cfg.android, ["tflite_int8"])
    device = json.loads(next((run.root / "benchmark" / "devices").glob("*.json")).read_text())
    assert device["rows"][0]["status"] == "ok"
    broken = tmp_path / "broken.txt"
    broken.write_text(good.decode().replace("avg=", "avg=1.2.", 2))
    monkeypatch.setenv("FAKE_ADB_LOG", str(broken))
    with pytest.raises(UserError, match="no model was measured .tflite_int8: benchmark_model failed"):
        android_report.bench(run, cfg, cfg.android, ["tflite_int8"])
    device = json.loads(next((run.root / "benchmark" / "devices").glob("*.json")).read_text())
    assert device["rows"][0]["status"] == "ok"  # the earlier result stays
