"""compress bundle: the tar.gz, its runner (numpy + one runtime), and the runner on a Pi-like venv."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from fixtures.bench_run import make_tflite
from student_fixture import run_stage, smoke_config

from deploy import bundle
from pipeline.errors import UserError
from pipeline.export import inventory
from pipeline.report import results, write
from pipeline.run.rundir import RunDir


@pytest.fixture(scope="module")
def tflite_dir(request):
    return make_tflite(request.config.cache.mkdir("compress-tflite-16x1x4"), 16, 1, 4)


@pytest.fixture
def tflite_run(tmp_path, tflite_dir):
    """A run whose quantize stage wrote TFLite fp32 and int8 (the smoke data: 16 x 16 x 1, 4 classes)."""
    run = RunDir(tmp_path / "run")
    run.create()
    for name in ("tflite_fp32.tflite", "tflite_int8.tflite"):
        shutil.copy(tflite_dir / name, run.stage_dir("quantize") / name)
    return run


def _unpack(path: Path, dest: Path) -> Path:
    with tarfile.open(path) as tar:
        tar.extractall(dest, filter="data")
    return dest / bundle.TOP


def _run_runner(python: str, folder: Path, out: Path) -> dict:
    proc = subprocess.run([python, str(folder / "runner.py"), "--bundle", str(folder), "--out", str(out),
                           "--device", "test-board"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return results.load_results(out)


def test_bundle_contents(tflite_run, tmp_path):
    cfg = smoke_config()
    path = bundle.build(tflite_run, cfg, ["tflite_int8", "tflite_fp32"], 100)
    folder = _unpack(path, tmp_path / "unpacked")
    assert {p.name for p in folder.iterdir()} == {"bundle.json", "README.md", "requirements.txt", "runner.py",
                                                  "eval.npz", "models"}
    spec = json.loads((folder / "bundle.json").read_text())
    assert spec["run"]["run_id"] == inventory.run_info(tflite_run.root, tflite_run.manifest())["run_id"]
    assert [m["artifact"] for m in spec["models"]] == ["tflite_int8", "tflite_fp32"]
    assert spec["models"][0]["meta"]["mean"] and (folder / spec["models"][0]["file"]).is_file()
    assert [m["meta"]["layout"] for m in spec["models"]] == ["NHWC", "NHWC"]  # the data's NCHW was copied here
    assert (folder / "requirements.txt").read_text().split() == ["numpy>=1.23.2", "ai-edge-litert==2.3.0"]
    assert "pip install -r requirements.txt      # numpy>=1.23.2 + ai-edge-litert==2.3.0" in (
        folder / "README.md").read_text()
    assert "import torch" not in (folder / "runner.py").read_text()
    import numpy as np
    assert len(np.load(folder / "eval.npz")["labels"]) == 100


def test_the_eval_subset_covers_every_class_in_proportion(tmp_path):
    """It was the first N test images, and a photo folder's test split is sorted by class: the board's top-1
    covered the first classes only."""
    import numpy as np
    import torch

    labels = torch.tensor([0] * 20 + [1] * 10 + [2] * 10 + [3] * 10)  # class-sorted, as photo_scan lists them
    ds = SimpleNamespace(test_x=torch.arange(50, dtype=torch.uint8).reshape(50, 1, 1, 1), test_y=labels,
                         mean=[0.5], std=[0.5])
    first = np.load(inventory.write_eval_set(tmp_path / "a.npz", ds, 20))
    again = np.load(inventory.write_eval_set(tmp_path / "b.npz", ds, 20))
    assert np.bincount(first["labels"]).tolist() == [8, 4, 4, 4]
    assert (first["images"] == again["images"]).all()  # the same images every time: host and boards compare
    picked = first["images"].ravel()
    assert (np.diff(picked) > 0).all() and (labels.numpy()[picked] == first["labels"]).all()  # in split order
    every = np.load(inventory.write_eval_set(tmp_path / "c.npz", ds, 0))  # 0 or >= the split: all, unchanged
    assert (every["images"].ravel() == np.arange(50)).all() and (every["labels"] == labels.numpy()).all()


def test_bundle_refuses_missing_or_torch_models(tflite_run):
    cfg = smoke_config()
    with pytest.raises(UserError, match=r"has no onnx_fp32 \(onnx_fp32.onnx not written by stage 'export'\); run"):
        bundle.build(tflite_run, cfg, ["tflite_int8", "onnx_fp32"], 10)
    with pytest.raises(UserError, match="PyTorch checkpoint"):
        bundle.build(tflite_run, cfg, ["torch_fp32"], 10)
    assert not (tflite_run.root / "bundle").exists() or not any((tflite_run.root / "bundle").iterdir())


def test_bundle_runner_writes_the_results_schema(tflite_run, tmp_path, cli):
    result = cli("-c", "smoke", "-r", str(tflite_run.root), "bundle", "--images", "64")
    assert result.exit_code == 0, result.output
    path = next((tflite_run.root / "bundle").glob("*.tar.gz"))
    doc = _run_runner(sys.executable, _unpack(path, tmp_path / "u"), tmp_path / "res.json")
    assert doc["machine"]["device"] == "test-board"
    assert doc["run"]["run_id"] == inventory.run_info(tflite_run.root, tflite_run.manifest())["run_id"]
    rows = {r["artifact"]: r for r in doc["rows"]}
    assert rows["tflite_int8"]["status"] == "ok" and rows["tflite_int8"]["images"] == 64
    assert "tflite_fp16" not in rows  # in bundle.formats but never written: left out of the default list


def test_an_out_that_cannot_be_written_is_one_line(tflite_run, tmp_path, cli):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    cases = [(tmp_path / "a-file" / "b.tar.gz", "part of the path is a file, not a folder"),
             (tmp_path / "a-folder", "it is a folder"),
             (Path("/proc/b.tar.gz"), "cannot write to /proc/b.tar.gz")]  # 0 bytes free, yet not full
    for out, message in cases:
        result = cli("-c", "smoke", "-r", str(tflite_run.root), "bundle", "--out", str(out))
        assert result.exit_code == 2, result.output
        assert message in result.output and "pick another path" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_runner_refuses_an_out_in_a_missing_folder_before_measuring(tmp_path, monkeypatch, capsys):
    """It measured every model (minutes on a Pi), then lost them all to a FileNotFoundError traceback."""
    from deploy import runner

    (tmp_path / "bundle.json").write_text("{}")
    monkeypatch.setattr(runner, "run_bundle", lambda *a: pytest.fail("measured before checking --out"))
    out = tmp_path / "nowhere" / "r.json"
    assert runner.main(["--bundle", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"folder {out.parent} does not exist; create it or pass another --out" in err
    assert len(err.strip().splitlines()) == 1


def test_runner_without_numpy_says_what_to_install(tmp_path):
    shadow = tmp_path / "shadow" / "numpy"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named numpy')\n")
    runner = Path(bundle.__file__).with_name("runner.py")
    proc = subprocess.run([sys.executable, str(runner)], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(tmp_path / "shadow"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert proc.stderr == "error: numpy is not installed; run: pip install -r requirements.txt\n"


def test_runner_refuses_a_bundle_of_another_format(tmp_path):
    """Any bundle.json was accepted: one of another format failed with a KeyError traceback."""
    (tmp_path / "bundle.json").write_text(json.dumps({"schema": "compress.bundle/0", "entries": []}))
    runner = Path(bundle.__file__).with_name("runner.py")
    proc = subprocess.run([sys.executable, str(runner), "--bundle", str(tmp_path), "--out", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"error: {tmp_path / 'bundle.json'} is of format 'compress.bundle/0', not "
                           "'compress.bundle/1'; rebuild the bundle with 'compress bundle' and copy it here again\n")


def test_runtime_option_packs_tflite_runtime_with_numpy_1(tflite_run, tmp_path, cli):
    out = tmp_path / "b.tar.gz"
    result = cli("-c", "smoke", "-r", str(tflite_run.root), "bundle", "--runtime", "tflite-runtime", "--out", str(out))
    assert result.exit_code == 0, result.output
    folder = _unpack(out, tmp_path / "u")
    assert (folder / "requirements.txt").read_text().split() == ["numpy<2", "tflite-runtime==2.14.0"]
    assert "TFLite runtime: tflite-runtime==2.14.0" in (folder / "README.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--images", "-1"], "Invalid value for '--images'"),
    (["--format", "tflite_in8"], "unknown format 'tflite_in8' (did you mean 'tflite_int8'?); valid: torch_fp32,"),
    (["--runtime", "tflite-runtim"], "'bundle.runtime' = 'tflite-runtim' is not allowed (did you mean "
                                     "'tflite-runtime'?); use one of: ai-edge-litert, tflite-runtime"),
    (["--runtime", "ai_edge_litert"], "(did you mean 'ai-edge-litert'?)"),
])
def test_bad_bundle_options(tflite_run, cli, args, message):
    result = cli("-c", "smoke", "-r", str(tflite_run.root), "bundle", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    if args[0] != "--images":  # click's own errors come boxed, ours are one line
        assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.fixture(scope="module")
def pi_python(request):
    """A venv with tflite-runtime 2.14 and numpy<2 (what Raspberry Pi setups run), cached between sessions."""
    venv = request.config.cache.mkdir("compress-pi-venv")
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "tflite-runtime==2.14.0", "numpy<2"],
                       check=True, timeout=600)
        (venv / ".ready").write_text("ok")
    return str(python)


@pytest.mark.slow
def test_pi_venv_accuracy_equals_the_benchmark_stage(tflite_run, tmp_path, pi_python):
    cfg = smoke_config("bundle.images=0", "benchmark.eval_images=0")
    run_stage(tflite_run, cfg, "benchmark")
    host = {r["artifact"]: r for r in results.load_results(tflite_run.root / "benchmark" / "results.json")["rows"]}
    path = bundle.build(tflite_run, cfg, ["tflite_fp32", "tflite_int8"], cfg.bundle.images)
    folder = _unpack(path, tmp_path / "u")
    same = _run_runner(sys.executable, folder, tmp_path / "host.json")  # the runtime the stage used
    for row in same["rows"]:
        assert (row["artifact"], row["top1"]) == (row["artifact"], host[row["artifact"]]["top1"])
    doc = _run_runner(pi_python, folder, tmp_path / "pi.json")
    assert doc["machine"]["runtimes"].get("tflite-runtime") == "2.14.0" and "torch" not in doc["machine"]["runtimes"]
    assert doc["machine"]["runtimes"]["numpy"].startswith("1.")
    for row in doc["rows"]:
        assert row["status"] == "ok", row
        expected = host[row["artifact"]]
        assert row["images"] == expected["images"]
        if row["precision"] == "fp32":
            assert row["top1"] == expected["top1"], row["artifact"]
        else:  # tflite-runtime 2.14's int8 kernels round differently from ai-edge-litert's: a few near-ties flip
            assert abs(row["top1"] - expected["top1"]) <= 0.01, (row["artifact"], row["top1"], expected["top1"])
    write.add(tflite_run, [tmp_path / "pi.json"], cfg.benchmark.max_drop)
    assert "test-board" in (tflite_run.root / "benchmark" / "report.md").read_text()


def test_bundle_refuses_a_run_in_use_and_a_missing_run_folder(tflite_run, cli, tmp_path):
    """A running 'compress all' may be replacing the models: bundle refuses (exit 2) and leaves no tar.gz."""
    with tflite_run.locked():
        result = cli("-c", "smoke", "-r", str(tflite_run.root), "bundle", "--out", str(tmp_path / "b.tar.gz"))
    assert result.exit_code == 2 and "is in use by pid" in result.output, result.output
    assert not (tmp_path / "b.tar.gz").exists()
    missing = cli("-c", "smoke", "-r", str(tmp_path / "nowhere"), "bundle")
    assert missing.exit_code == 2 and "does not exist; run 'compress all' first" in missing.output
    assert not (tmp_path / "nowhere").exists()


def test_a_cut_short_tflite_file_says_so_and_how_to_rebuild_it(tflite_dir, tmp_path):
    from pipeline.export import tflite_tools

    cut = tmp_path / "tflite_int8.tflite"
    whole = (tflite_dir / "tflite_int8.tflite").read_bytes()
    cut.write_bytes(whole[:64])  # cut before its root table: nothing can be read
    with pytest.raises(UserError, match=r"is damaged or cut short \(its TFLite flatbuffer cannot be read: "
                                        r"unpack_from .*\); rerun 'compress all' to rebuild it"):
        tflite_tools.metadata(cut)


def test_bundle_refuses_models_of_a_stage_that_is_stale_under_this_config(tflite_run, cli, tmp_path):
    """'compress -r runs/photos bundle' without '-c photos' packed the photo models with Fashion-MNIST's test
    images and normalisation (any other seed or data setting alike): the board then measured another test set."""
    cfg = smoke_config()
    with pytest.raises(UserError, match="stage 'quantize' of .* is stale under this config"):
        bundle.build(tflite_run, cfg, ["tflite_int8"], 10, states={"quantize": "stale"})
    tflite_run.record("quantize", {"fingerprint": "made with another config", "outputs": []})
    result = cli("-c", "smoke", "-r", str(tflite_run.root), "bundle", "--out", str(tmp_path / "b.tar.gz"))
    assert result.exit_code == 2 and "is stale under this config" in result.output, result.output
    assert not (tmp_path / "b.tar.gz").exists()


def test_a_model_the_run_does_not_have_says_which_setting_leaves_it_out_or_why_it_failed(tflite_run):
    """'run compress all first' was the advice for a file the config never makes (QAT off, a target not listed)
    and for one that failed its gate: rerunning changed nothing."""
    from pipeline.export import inventory

    made = {"tflite_fp32": {"status": "ok"}, "tflite_int8": {"status": "failed", "reason": "accuracy drop 3.1 "
                                                               "points > quantize.max_drop 1.0; not written"}}
    tflite_run.record("quantize", {"outputs": [{"path": "quantize/tflite_fp32.tflite", "sha256": "x", "bytes": 1}],
                                   "metrics": {"artifacts": made}})
    manifest = tflite_run.manifest()
    assert inventory.locate(tflite_run.root, manifest, "tflite_fp32").name == "tflite_fp32.tflite"
    with pytest.raises(UserError, match="does not make tflite_int8_qat: .* quantize.qat"):
        inventory.locate(tflite_run.root, manifest, "tflite_int8_qat")
    with pytest.raises(UserError, match="has no tflite_int8: quantize: accuracy drop 3.1 points") as failed:
        inventory.locate(tflite_run.root, manifest, "tflite_int8")  # on disk from before, not this run's
    assert "compress all" not in str(failed.value)
