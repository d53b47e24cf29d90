"""Quantization-aware fine-tuning in the quantize stage (pipeline/export/qat.py): when it runs, what it writes,
that its files agree with the fake-quantized model, and that a killed fine-tune resumes to the same result."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
QAT = ["--set", "quantize.qat=on", "--set", "quantize.targets=[x86]", "--set", "quantize.tflite=[]"]


def _reason(qat: str, artifacts: dict, tflite=("int8",), targets=("x86",)):
    from pipeline.export.qat import reason

    return reason(SimpleNamespace(qat=qat, tflite=tflite, targets=targets), artifacts)


def test_auto_runs_qat_only_when_a_post_training_int8_file_fails_its_gate():
    passed = {"tflite_int8": {"status": "ok"}, "onnx_int8_x86": {"status": "ok"}}
    failed = {**passed, "onnx_int8_x86": {"status": "failed", "cause": "accuracy_gate"}}
    broken = {**passed, "tflite_int8": {"status": "failed", "cause": "input"}}  # not an accuracy problem
    assert _reason("auto", passed) is None
    assert _reason("auto", broken) is None
    assert "onnx_int8_x86 failed the accuracy gate" in _reason("auto", failed)
    assert _reason("on", passed) == "quantize.qat is on"
    assert _reason("off", failed) is None
    assert _reason("on", passed, tflite=(), targets=("arm",)) is None  # no file it serves


def test_yaml_on_and_off_are_read_as_the_words(tmp_path, cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("quantize:\n  qat: on\n")
    result = cli("-c", str(cfg), "config")
    assert result.exit_code == 0 and "qat: 'on'" in result.output  # quoted, so it reads back as the word
    result = cli("-c", "smoke", "--set", "quantize.qat=sometimes", "config")
    assert result.exit_code == 2 and "quantize.qat" in result.output


def test_the_fine_tuned_float_weights_map_back_onto_the_student():
    pytest.importorskip("litert_torch")
    from pipeline import models
    from pipeline.export import qat
    from pipeline.export.litert_convert import qat_graph

    student = models.create("resnet8", 3, 4, width=0.5).eval()
    graph, _ = qat_graph(student, (3, 16, 16))
    net = qat.QatNet(graph, freeze_after=1)
    with torch.no_grad():  # what a fine-tune does to the float tensors the graph holds
        for t in [*net.graph.parameters(), *(b for n, b in net.graph.named_buffers() if n.endswith("running_mean"))]:
            t.add_(0.5)
    tuned = qat.float_student(student, net.eval())
    trained, before = net.graph.state_dict(), student.state_dict()
    moved = [k for k, v in tuned.state_dict().items() if k in trained and not torch.equal(v, before[k])]
    assert len(moved) == sum(1 for k in before if not k.endswith(("running_var", "num_batches_tracked")))
    assert all(torch.equal(tuned.state_dict()[k], trained[k]) for k in moved)


def test_qat_epochs_count_passes_over_the_training_set():
    from pipeline.export.qat import schedule

    assert schedule(0.25, 1000, 64) == (1, 250)  # a quarter: one epoch on a quarter of the images
    assert schedule(1, 1000, 64) == (1, 1000) and schedule(3, 1000, 64) == (3, 1000)
    assert schedule(1.5, 1000, 64) == (2, 750)  # spread over whole epochs of a subset
    assert schedule(1e-6, 1000, 64) == (1, 64)  # at least one batch
    assert schedule(0.25, 40, 64) == (1, 40)  # a set smaller than a batch: the whole set (fit then says so)


@pytest.mark.slow
def test_the_fine_tune_distils_from_the_distill_stages_logits_without_running_the_teacher(tmp_path):
    pytest.importorskip("litert_torch")
    import dataclasses

    from rich.console import Console
    from student_fixture import smoke_config, train_student

    from pipeline.export import qat

    cfg = smoke_config("data.synthetic_train=200")
    qcfg = dataclasses.replace(cfg.quantize, qat_epochs=0.5)
    student, ds = train_student(cfg, steps=30)  # trained: a fresh net's all-zero maps have no int8 range
    teacher, _ = train_student(cfg, steps=10)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    soft = torch.randn(len(ds.train_x), len(ds.classes))
    net, m = qat.fine_tune(student, teacher, ds, cfg, qcfg, tmp_path / "given", seed=0, fingerprint="a",
                           console=Console(quiet=True), soft_targets=soft)
    assert not calls and m["soft_targets"] == "distill stage" and m["cache_seconds"] == 0.0
    assert m["images_per_epoch"] == round(len(ds.train_y) / 2) and len(m["history"]) == 1
    _, m = qat.fine_tune(student, teacher, ds, cfg, qcfg, tmp_path / "computed", seed=0, fingerprint="b",
                         console=Console(quiet=True), soft_targets=soft[:10])  # not this training set's: ignored
    assert calls and m["soft_targets"] == "computed"
    assert qat.distilled_targets(tmp_path / "missing.pt") is None
    (tmp_path / "junk.pt").write_bytes(b"not a tensor")
    assert qat.distilled_targets(tmp_path / "junk.pt") is None


def _quantize(run: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline.cli", "-c", "smoke", "-r", str(run), *QAT, "--set",
           "quantize.qat_epochs=3", *extra, "quantize"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _qat(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"]["quantize"]["metrics"]


@pytest.mark.slow
def test_a_fine_tune_killed_mid_way_resumes_to_the_uninterrupted_result(tmp_path):
    pytest.importorskip("litert_torch")
    whole = tmp_path / "whole"
    proc = _quantize(whole)
    assert proc.wait(timeout=600) == 0, proc.stdout.read()
    killed = tmp_path / "killed"
    shutil.copytree(whole, killed, ignore=shutil.ignore_patterns("quantize"))
    proc = _quantize(killed)
    deadline = time.time() + 600
    while not (killed / "quantize" / "qat" / "last.pt").exists():  # the first epoch's checkpoint
        assert proc.poll() is None and time.time() < deadline, "the fine-tune ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc = _quantize(killed)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    assert "resuming from epoch" in out
    a, b = _qat(whole), _qat(killed)
    assert [h["train_loss"] for h in b["qat"]["history"]] == [h["train_loss"] for h in a["qat"]["history"]]
    assert b["artifacts"]["onnx_int8_qat"]["val_top1"] == a["artifacts"]["onnx_int8_qat"]["val_top1"]
    sa = torch.load(whole / "quantize" / "qat" / "qat_state.pt", weights_only=True)
    sb = torch.load(killed / "quantize" / "qat" / "qat_state.pt", weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_qat_writes_a_tflite_and_an_onnx_file_that_agree_with_the_fake_quantized_model(tmp_path, cli):
    pytest.importorskip("litert_torch")
    run = tmp_path / "run"
    result = cli("-c", "smoke", "-r", str(run), "--set", "quantize.qat=on", "--set", "quantize.targets=[x86]",
                 "--set", "quantize.tflite=[int8]", "quantize")
    assert result.exit_code == 0, result.output
    m = _qat(run)
    for name in ("tflite_int8_qat", "onnx_int8_qat"):
        entry = m["artifacts"][name]
        assert entry["status"] == "ok" and (run / entry["path"]).is_file()
        # 52 validation images of a 45 %-accurate smoke student hold many near ties, and the runtime's rounding
        # differs from fake quantization's by a step here and there; a wrong graph or wrong ranges agree far less
        assert entry["fakequant_agreement"] >= 0.85, (name, entry)
        assert entry["drop_points"] <= 1.0
    assert m["artifacts"]["tflite_int8_qat"]["audit"]["partitions"] == 1
    assert m["qat"]["history"] and m["qat"]["reason"] == "quantize.qat is on"
    assert m["qat"]["soft_targets"] == "distill stage"  # ama with the original teacher's logits cached them
