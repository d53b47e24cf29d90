"""The measurement code (deploy/runner.py), the results schema and report, and the benchmark stage."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from fixtures.bench_run import build_run, export_onnx, make_tflite
from student_fixture import run_stage, smoke_config, train_student

from deploy import runner
from pipeline import data
from pipeline.config import DataConfig
from pipeline.errors import UserError
from pipeline.export import inventory
from pipeline.report import markdown, results, table, write

FAST = {"warmup_runs": 1, "min_runs": 5, "min_seconds": 0.0, "throughput_batch": 4, "throughput_seconds": 0.0,
        "threads": 1, "eval_batch": 32}


@pytest.fixture(scope="module")
def tflite_dir(request):
    """Tiny TFLite fp32 / int8 models, made once and cached between sessions (TensorFlow takes ~10 s)."""
    return make_tflite(request.config.cache.mkdir("compress-tflite-16x1x4"), 16, 1, 4)


def test_time_calls_runs_at_least_min_runs_and_min_seconds():
    calls = []
    times = runner.time_calls(calls.append, 0, warmup=3, min_runs=50, min_seconds=0.0)
    assert len(times) == 50 and len(calls) == 53
    started = time.perf_counter()
    times = runner.time_calls(lambda _: time.sleep(0.002), 0, warmup=0, min_runs=2, min_seconds=0.05)
    assert time.perf_counter() - started >= 0.05 and len(times) >= 10


def test_summarize_percentiles():
    got = runner.summarize(np.arange(1, 101) / 1000.0)  # 1 .. 100 ms
    assert got["p50_ms"] == pytest.approx(50.5) and got["p90_ms"] == pytest.approx(90.1)
    assert got["p99_ms"] == pytest.approx(99.01) and got["runs"] == 100


def test_normalize_matches_training():
    ds = data.load(DataConfig(dataset="synthetic", synthetic_train=64, synthetic_test=16, synthetic_channels=3))
    ours = runner.normalize(ds.test_x.numpy(), ds.mean, ds.std)
    np.testing.assert_allclose(ours, ds.normalize(ds.test_x).numpy(), atol=1e-6)


def test_onnx_accuracy_equals_pytorch(tmp_path):
    import torch

    from pipeline import models

    cfg = smoke_config()
    ds = data.load(cfg.data, cfg.seed)
    torch.manual_seed(0)
    model = models.create("resnet8", ds.channels, len(ds.classes), 0.25).eval()
    path = export_onnx(model, tmp_path / "m.onnx", ds.channels, ds.size)
    np.savez(tmp_path / "eval.npz", images=ds.test_x.numpy(), labels=ds.test_y.numpy())
    row = runner.measure({"path": str(path), "adapter": "onnxruntime", "data": str(tmp_path / "eval.npz"),
                          "settings": FAST, "meta": {"mean": ds.mean, "std": ds.std}})
    with torch.no_grad():
        expected = (model(ds.normalize(ds.test_x)).argmax(1) == ds.test_y).float().mean().item()
    assert row["top1"] == pytest.approx(expected) and row["images"] == len(ds.test_y)
    assert row["latency"]["one_thread"]["runs"] >= 5 and row["layout"] == "NCHW"
    assert "top5" not in row  # 4 classes: top-5 only above 10 classes


def test_tflite_int8_is_quantised_with_the_tensor_scale(tflite_dir, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (40, 1, 16, 16), dtype=np.uint8)
    x = runner.normalize(images, [0.5], [0.25])
    fp32 = runner.TfliteModel(tflite_dir / "tflite_fp32.tflite", 1, (1, 16, 16))
    int8 = runner.TfliteModel(tflite_dir / "tflite_int8.tflite", 1, (1, 16, 16))
    assert fp32.partitions == int8.partitions == 1 and int8.package == "ai-edge-litert"  # the host's runtime
    assert fp32.layout == int8.layout == "NHWC" and int8.prepare(x[:1]).dtype == np.int8
    for m in (fp32, int8):
        assert m.resize(8)
    a = fp32.logits(fp32(fp32.prepare(x[:8])))
    b = int8.logits(int8(int8.prepare(x[:8])))
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max() + 0.05  # int8 close to fp32 only if (de)quantised right


def _doc(device: str, run_id: str, rows: list) -> dict:
    return runner.results_doc({"run_id": run_id}, {**runner.machine_info(), "device": device}, {}, rows)


def _row(name: str, top1: float, p50: float, runtime: str = "onnxruntime", precision: str = "fp32") -> dict:
    return {"artifact": name, "status": "ok", "top1": top1, "runtime": runtime, "precision": precision,
            "latency": {"one_thread": {"p50_ms": p50, "p90_ms": p50 * 1.2}}, "bytes": 1000}


def test_table_drop_speedup_front_and_recommendation():
    rows = table.table(_doc("host", "r", [
        _row("torch_fp32", 0.90, 1.0, "torch"), _row("onnx_fp32", 0.90, 0.2), _row("onnx_int8_x86", 0.897, 0.1,
                                                                                 precision="int8"),
        _row("tflite_int8", 0.80, 0.05, "tflite", "int8"), _row("slow_bad", 0.85, 0.5),
        {"artifact": "tflite_fp16", "status": "failed", "reason": "x"}]))
    by = {r["artifact"]: r for r in rows}
    assert by["onnx_int8_x86"]["drop_pts"] == pytest.approx(0.3) and by["onnx_fp32"]["speedup"] == pytest.approx(5.0)
    front = [r["artifact"] for r in table.pareto_front(rows)]
    assert front == ["tflite_int8", "onnx_int8_x86", "onnx_fp32"]  # slow_bad and torch_fp32 are dominated
    assert table.recommended(rows, 0.5) == {"host": "onnx_int8_x86"}  # tflite_int8 is faster but drops 10 pts
    assert table.recommended(rows, 20) == {"host": "tflite_int8"}


def test_recommendation_reads_validation_where_measured():
    def val(row, v):
        return {**row, "val_top1": v}
    rows = table.table(_doc("host", "r", [
        val(_row("onnx_fp32", 0.90, 0.2), 0.91), val(_row("onnx_int8_x86", 0.897, 0.1, precision="int8"), 0.90),
        val(_row("tflite_int8", 0.899, 0.05, "tflite", "int8"), 0.895)]))
    by = {r["artifact"]: r for r in rows}
    assert by["tflite_int8"]["val_drop_pts"] == pytest.approx(1.5) and by["tflite_int8"]["drop_pts"] == \
        pytest.approx(0.1)
    # on test tflite_int8 (fastest) is within 0.5 points, but the choice is made on validation, where it is not
    assert table.recommended(rows, 0.5) == {"host": "onnx_fp32"}
    assert table.recommended(rows, 1.0) == {"host": "onnx_int8_x86"}
    assert "| tflite_int8 | host | 89.50 | +1.50 | 89.90 |" in "\n".join(markdown.splits(rows))
    # the report says why the fastest file was passed over, and how an int8 one may win its points back
    assert markdown.passed_over(rows, {"host": "onnx_fp32"}, 0.5) == [
        "- onnx_int8_x86 is faster on host (0.100 ms against 0.200) but loses 1.00 validation points, more than "
        "benchmark.max_drop 0.5, so onnx_fp32 is recommended. `--set quantize.qat=on` fine-tunes an int8 file with "
        "the teacher that may win them back.",
        "- tflite_int8 is faster on host (0.050 ms against 0.200) but loses 1.50 validation points, more than "
        "benchmark.max_drop 0.5, so onnx_fp32 is recommended. `--set quantize.qat=on` fine-tunes an int8 file with "
        "the teacher that may win them back."]
    assert markdown.passed_over(rows, {"host": "onnx_int8_x86"}, 1.0)[0].startswith("- tflite_int8 is faster")
    with_qat = rows + table.table(_doc("host", "r", [val(_row("tflite_int8_qat", 0.899, 0.05, "tflite", "int8"),
                                                          0.89)]))
    assert not any("quantize.qat" in line for line in markdown.passed_over(with_qat, {"host": "onnx_int8_x86"}, 1.0))


@pytest.mark.parametrize("broken, message", [
    ({"schema": "other/1"}, "not a compress results file"), ({"rows": "x"}, "'rows' is missing"),
    ({"rows": [{"artifact": "a", "status": "ok"}]}, "no latency"), ({"run": {}}, "run_id"),
    ({"rows": [{**_row("a", 0.5, 1.0), "top1": "abc"}]}, r"has top1 = 'abc', not a number"),
    ({"rows": [{**_row("a", 0.5, 1.0), "latency": {"one_thread": None}}]}, "latency that is not a table"),
    ({"rows": [{**_row("a", 0.5, 1.0), "latency": None}]}, "no latency.one_thread.p50_ms"),
])
def test_validate_rejects_wrong_files(broken, message):
    doc = {**_doc("pi", "r", [_row("a", 0.5, 1.0)]), **broken}
    with pytest.raises(UserError, match=message):
        results.validate(doc, "x.json")


def _run_with_results(tmp_path):
    from pipeline.run.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.create()
    (run.stage_dir("quantize") / "tflite_int8.tflite").write_bytes(b"model")
    doc = _doc("host", inventory.run_info(run.root, run.manifest())["run_id"], [_row("torch_fp32", 0.9, 1.0, "torch"),
                                                             _row("tflite_int8", 0.9, 0.1, "tflite", "int8")])
    outputs = write.write_all(run.stage_dir("benchmark"), doc, 0.5)
    from pipeline.files import file_record
    run.record("benchmark", {"fingerprint": "f", "outputs": [file_record(p, run.root) for p in outputs]})
    return run, doc


def test_report_add_merges_and_refuses_other_runs(tmp_path, cli):
    run, doc = _run_with_results(tmp_path)
    pi = tmp_path / "pi.json"
    pi.write_text(json.dumps(_doc("pi4", doc["run"]["run_id"], [_row("tflite_int8", 0.9, 0.7, "tflite", "int8")])))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_doc("pi5", "another-run", [_row("tflite_int8", 0.9, 0.3, "tflite", "int8")])))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something/else"}))
    before = (run.root / "benchmark" / "report.md").read_text()
    own = run.root / "benchmark" / "results.json"
    for wrong, message in ((other, "was measured on the models of run another-run"), (bad, "schema"),
                           (tmp_path / "none.json", "does not exist"), (own, "this run's own")):
        result = cli("-r", str(run.root), "-c", "smoke", "report", "--add", str(pi), "--add", str(wrong))
        assert result.exit_code == 2 and message in result.output
        assert (run.root / "benchmark" / "report.md").read_text() == before  # nothing written
    result = cli("-r", str(run.root), "-c", "smoke", "report", "--add", str(pi))
    assert result.exit_code == 0, result.output
    text = (run.root / "benchmark" / "report.md").read_text()
    assert "| tflite_int8 * | pi4 |" in text and "| tflite_int8 * | host |" in text
    manifest = run.manifest()["stages"]["benchmark"]["outputs"]
    from pipeline.files import sha256
    assert {o["path"]: o["sha256"] for o in manifest}["benchmark/report.md"] == sha256(
        run.root / "benchmark" / "report.md")  # recorded, so the stage is not made stale


def test_report_add_refuses_a_device_named_like_the_host(tmp_path, cli):
    """runner.py names a board by its hostname: a board called like the host was merged into the host's rows."""
    run, doc = _run_with_results(tmp_path)
    board = tmp_path / "board.json"
    rows = [_row("tflite_int8", 0.9, 5.0, "tflite", "int8")]
    board.write_text(json.dumps({**_doc("host", doc["run"]["run_id"], rows), "created": "2000-01-01T00:00:00"}))
    before = (run.root / "benchmark" / "report.md").read_text()
    result = cli("-r", str(run.root), "-c", "smoke", "report", "--add", str(board))
    assert result.exit_code == 2, result.output
    assert "device 'host' is the host's name; rerun runner.py --device NAME on the board" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (run.root / "benchmark" / "report.md").read_text() == before
    assert not (run.root / "benchmark" / "devices").exists()


def test_report_add_refuses_a_result_in_which_nothing_was_measured(tmp_path, cli):
    """runner.py writes its results.json even when every model failed (e.g. no runtime installed)."""
    run, doc = _run_with_results(tmp_path)
    failed = {"artifact": "tflite_int8", "status": "failed", "reason": "no TFLite runtime installed"}
    board = tmp_path / "board.json"
    board.write_text(json.dumps(_doc("pi4", doc["run"]["run_id"], [failed, {**failed, "artifact": "onnx_fp32"}])))
    before = (run.root / "benchmark" / "report.md").read_text()
    result = cli("-r", str(run.root), "-c", "smoke", "report", "--add", str(board))
    assert result.exit_code == 2, result.output
    assert "no model was measured (tflite_int8: no TFLite runtime installed)" in result.output
    assert (run.root / "benchmark" / "report.md").read_text() == before
    assert not (run.root / "benchmark" / "devices").exists()


@pytest.mark.slow
def test_benchmark_stage_measures_every_artifact(tmp_path, tflite_dir):
    cfg = smoke_config()
    student, ds = train_student(cfg, steps=30)
    run = build_run(tmp_path / "run", tflite_dir, student, ds)
    ctx = run_stage(run, cfg, "benchmark")
    doc = results.load_results(run.root / "benchmark" / "results.json")
    rows = {r["artifact"]: r for r in doc["rows"]}
    assert list(rows) == [a["artifact"] for a in inventory.artifacts(run.root, run.manifest())]
    assert not {"onnx_int8_dynamic", "tflite_fp16"} & set(rows)  # the fixture's quantize did not make them
    ok = {"teacher_fp32", "student_alone_fp32", "torch_fp32", "onnx_fp32", "onnx_simplified", "tflite_fp32",
          "tflite_int8"}
    assert {a for a, r in rows.items() if r["status"] == "ok"} == ok
    assert "calibration failed on purpose" in rows["onnx_int8_x86"]["reason"]
    assert "Protobuf" in rows["onnx_int8_arm"]["reason"]  # fails to load in onnxruntime; the rest still measured
    assert rows["onnx_fp32"]["top1"] == rows["torch_fp32"]["top1"] and rows["onnx_fp32"]["images"] == len(ds.test_y)
    assert all(0 <= rows[name]["val_top1"] <= 1 for name in ok)  # the recommendation's split, measured too
    for name in ok:
        lat = rows[name]["latency"]
        assert lat["one_thread"]["runs"] >= cfg.benchmark.min_runs and lat["all_cores"]["threads"] >= 1
        assert rows[name]["peak_rss_mb"] > 0 and rows[name]["throughput"]["images_per_s"] > 0
    assert doc["machine"]["cores"] and doc["machine"]["runtimes"]["onnxruntime"]
    assert doc["run"]["method"] == cfg.distill.method == "ama"  # so the report says what is known of it
    text = (run.root / "benchmark" / "report.md").read_text()
    assert all(f"| {name}" in text for name in rows) and "Distillation: distilled student" in text
    assert (run.root / "benchmark" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert ctx.metrics["recommended"] in ok


def test_missing_runtime_fails_that_row_only(tmp_path):
    shadow = tmp_path / "shadow" / "onnxruntime"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named onnxruntime')\n")
    np.savez(tmp_path / "eval.npz", images=np.zeros((2, 1, 4, 4), np.uint8), labels=np.zeros(2, np.int64))
    model = tmp_path / "m.onnx"
    model.write_bytes(b"unused")
    row = runner.measure_isolated({"artifact": "onnx_fp32", "path": str(model), "adapter": "onnxruntime",
                                   "data": str(tmp_path / "eval.npz"), "pythonpath": str(tmp_path / "shadow"),
                                   "meta": {"mean": [0.5], "std": [0.5]}})
    assert row["status"] == "failed" and row["reason"] == ("error: onnxruntime is not installed: "
                                                           "pip install onnxruntime")


def test_a_benchmark_that_measured_nothing_stops_with_what_to_do(tmp_path):
    from deploy import runner
    from stages.benchmark import check_measured

    (tmp_path / "m.onnx").write_bytes(b"unused")
    slow = runner.measure_isolated({"artifact": "onnx_fp32", "path": str(tmp_path / "m.onnx")}, timeout=0.01)
    assert slow["status"] == "failed" and slow["reason"] == "timed out after 0 s"
    slow["reason"] = "timed out after 5 s"  # as the stage's own timeout would say it
    ok = {"artifact": "torch_fp32", "status": "ok"}
    check_measured([ok, slow], 5)  # one measured artifact is a result
    with pytest.raises(UserError, match="no model to measure"):
        check_measured([], 5)
    with pytest.raises(UserError, match="every artifact timed out after 5 s; raise benchmark.timeout_s"):
        check_measured([slow, {**slow, "artifact": "tflite_fp32"}], 5)
    broken = {"artifact": "tflite_int8", "status": "failed", "reason": "error: ai_edge_litert is not installed"}
    with pytest.raises(UserError, match=r"no artifact could be measured \(onnx_fp32: timed out.*tflite_int8: error"):
        check_measured([slow, broken], 5)


def test_the_student_alone_is_listed_only_when_the_distill_stage_trained_it(tmp_path):
    """distill.method=student (or baseline off) trains no baseline: not a failed row; one made and then lost is."""
    for stage, name in (("teacher", "model.pt"), ("distill", "student.pt")):
        (tmp_path / stage).mkdir(exist_ok=True)
        (tmp_path / stage / name).write_bytes(b"x")

    def manifest(*distill_files):
        return {"stages": {"teacher": {"outputs": [{"path": "teacher/model.pt"}]},
                           "distill": {"outputs": [{"path": f"distill/{f}"} for f in distill_files]}}}

    def rows(m):
        return {a["artifact"]: a.get("status", "ok") for a in inventory.artifacts(tmp_path, m)}
    assert "student_alone_fp32" not in rows(manifest("student.pt"))
    assert rows(manifest("student.pt", "baseline.pt"))["student_alone_fp32"] == "failed"
    (tmp_path / "distill" / "baseline.pt").write_bytes(b"x")
    assert rows(manifest("student.pt", "baseline.pt"))["student_alone_fp32"] == "ok"
    assert rows({"stages": {}})["student_alone_fp32"] == "ok"  # no manifest (run_info): what is on disk


def test_a_model_of_another_input_size_names_its_shape_in_plain_numbers():
    """TFLite reports its input shape as numpy int32s: the message read 'model input [np.int32(1), ...]'."""
    with pytest.raises(ValueError, match=r"model input \[1, 16, 16, 1\] fits neither N x 1 x 24 x 24"):
        runner._layout(np.array([1, 16, 16, 1], dtype=np.int32), (1, 24, 24))
