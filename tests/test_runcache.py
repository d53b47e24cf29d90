"""The run-cache (finished work restored by fingerprint), `compress gc`, and fingerprints that see code."""
import json
import shutil
from pathlib import Path

from rich.console import Console

from pipeline import config
from pipeline.run import codegraph
from pipeline.run import runner as runner_mod
from pipeline.run.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent


def _outputs(run: Path, stage: str) -> dict[str, bytes]:
    entry = json.loads((run / "manifest.json").read_text())["stages"][stage]
    return {o["path"]: (run / o["path"]).read_bytes() for o in entry["outputs"]}


def test_setting_a_then_b_then_a_again_restores_a_without_training(cli, smoke_run, tmp_path):
    run = tmp_path / "run"
    first = cli(*smoke_run, "teacher")
    assert first.exit_code == 0 and "teacher epoch" in first.output
    a = _outputs(run, "teacher")
    second = cli(*smoke_run, "--set", "data.augment=crop", "teacher")
    assert second.exit_code == 0 and "teacher epoch" in second.output
    assert _outputs(run, "teacher") != a
    third = cli(*smoke_run, "teacher")
    assert third.exit_code == 0, third.output
    assert "teacher epoch" not in third.output and "restored from the run-cache" in third.output
    assert _outputs(run, "teacher") == a  # byte-identical to the first run
    status = cli(*smoke_run, "status")
    assert "done" in status.output and "run-cache" in status.output
    row = next(line for line in status.output.splitlines() if line.startswith("│ teacher"))
    assert row.rstrip(" │").endswith("2")  # two cached variants of the teacher


def test_force_reruns_instead_of_restoring(cli, smoke_run):
    assert cli(*smoke_run, "teacher").exit_code == 0
    forced = cli(*smoke_run, "teacher", "--force", "teacher")
    assert "teacher: done in" in forced.output and "restored" not in forced.output


def test_a_cached_file_edited_in_place_is_not_restored(cli, smoke_run, tmp_path):
    assert cli(*smoke_run, "teacher").exit_code == 0
    metrics = tmp_path / "run/teacher/metrics.jsonl"
    with open(metrics, "a") as fh:  # in place: the cache's hard link sees the edit too
        fh.write("{}\n")
    again = cli(*smoke_run, "teacher")
    assert again.exit_code == 0 and "teacher: done in" in again.output and "restored" not in again.output
    assert cli(*smoke_run, "--set", "teacher.lr=0.05", "teacher").exit_code == 0
    healed = cli(*smoke_run, "teacher")  # the entry was re-saved with good content
    assert "restored from the run-cache" in healed.output


def test_gc_keeps_what_the_run_uses_and_says_what_it_freed(cli, smoke_run, tmp_path):
    for lr in ("0.1", "0.05", "0.02"):
        assert cli(*smoke_run, "--set", f"teacher.lr={lr}", "teacher").exit_code == 0
    cache = RunDir(tmp_path / "run").cache
    assert len(cache.variants("teacher")) == 3
    kept = cli(*smoke_run, "gc", "--keep", "2")
    assert kept.exit_code == 0 and "removed 1 cached variant(s), freed" in kept.output
    assert len(cache.variants("teacher")) == 2
    result = cli(*smoke_run, "gc")
    assert "removed 1 cached variant(s)" in result.output
    (only,) = cache.variants("teacher")
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert only["fingerprint"] == manifest["stages"]["teacher"]["fingerprint"]
    freed = float(result.output.split("freed ")[1].split(" MB")[0])
    assert freed > 0  # the dropped variant's checkpoint lived only in the cache


def test_a_shared_cache_dir_serves_another_run_folder(cli, tmp_path):
    shared = ["-c", "smoke", "--cache-dir", str(tmp_path / "cache")]
    assert cli(*shared, "-r", str(tmp_path / "one"), "teacher").exit_code == 0
    other = cli(*shared, "-r", str(tmp_path / "two"), "teacher")
    assert "restored from the run-cache" in other.output
    assert _outputs(tmp_path / "two", "teacher") == _outputs(tmp_path / "one", "teacher")


def test_a_run_remembers_the_cache_dir_it_ran_with(cli, tmp_path):
    """Without the flag, status showed 0 cached variants, gc 'freed 0.0 MB' and made an empty .cache, and the next
    run split the cache in two."""
    run = ["-c", "smoke", "-r", str(tmp_path / "one")]
    assert cli(*run, "--cache-dir", str(tmp_path / "cache"), "teacher").exit_code == 0
    status = cli(*run, "status")
    assert f"run-cache:{tmp_path / 'cache'}(" in "".join(status.output.split()), status.output
    again = cli(*run, "--set", "teacher.lr=0.05", "teacher")
    assert again.exit_code == 0 and not (tmp_path / "one" / ".cache").exists()
    assert len(RunDir(tmp_path / "one", tmp_path / "cache").cache.variants("teacher")) == 2
    assert cli(*run, "--cache-dir", str(tmp_path / "one" / ".cache"), "teacher").exit_code == 0  # back to its own
    assert RunDir(tmp_path / "one").cache.root == tmp_path / "one" / ".cache"
    (tmp_path / "one" / ".cache-dir").write_text("\n")  # emptied by hand: the run's own, not the working folder
    assert RunDir(tmp_path / "one").cache.root == tmp_path / "one" / ".cache"


def test_gc_on_a_shared_cache_keeps_what_the_other_runs_use(cli, tmp_path):
    shared = ["-c", "smoke", "--cache-dir", str(tmp_path / "cache")]
    assert cli(*shared, "-r", str(tmp_path / "one"), "teacher").exit_code == 0
    assert cli(*shared, "-r", str(tmp_path / "two"), "--set", "teacher.lr=0.05", "teacher").exit_code == 0
    assert cli(*shared, "-r", str(tmp_path / "three"), "teacher").exit_code == 0  # restored from one's entry
    result = cli(*shared, "-r", str(tmp_path / "one"), "gc")
    assert result.exit_code == 0 and "removed 0 cached variant(s)" in result.output
    assert len(RunDir(tmp_path / "one", tmp_path / "cache").cache.variants("teacher")) == 2
    assert cli(*shared, "-r", str(tmp_path / "two"), "status").exit_code == 0
    missing = cli(*shared, "-r", str(tmp_path / "typo"), "gc")
    assert missing.exit_code == 2 and "does not exist" in missing.output and not (tmp_path / "typo").exists()


def test_import_graph_of_the_stages():
    quantize = codegraph.closure("stages.quantize")
    teacher = codegraph.closure("stages.teacher")
    assert "pipeline.export.ort_quant" in quantize and "pipeline.export.ort_quant" not in teacher
    assert {"pipeline.train.engine", "pipeline.data", "pipeline.models"} <= set(teacher)
    assert "pipeline.distill.methods.ama" in codegraph.closure("stages.distill")  # loaded by name from a registry
    assert "deploy.runner" in codegraph.closure("stages.benchmark")
    distill = codegraph.closure("stages.distill")  # each file once, under its module name
    assert all(part for name in distill for part in name.split(".")) and len(set(distill.values())) == len(distill)


def test_editing_a_helper_only_quantize_uses_makes_only_quantize_and_benchmark_stale(tmp_path, monkeypatch):
    copy = tmp_path / "src"
    for pkg in codegraph.PACKAGES:
        shutil.copytree(ROOT / pkg, copy / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codegraph, "ROOT", copy)
    r = runner_mod.Runner(config.load("smoke"), RunDir(tmp_path / "run"), Console(quiet=True))
    manifest = {"stages": {}}
    for name in r.stages:  # every stage done, as far as fingerprints go
        manifest["stages"][name] = {"fingerprint": r.fingerprint(name, manifest), "outputs": []}
    assert set(r.states(manifest).values()) == {"done"}
    helper = copy / "pipeline" / "export" / "ort_quant.py"
    helper.write_text(helper.read_text() + "\n# an edit\n")
    codegraph._closure.cache_clear()
    codegraph.imported_names.cache_clear()
    stale = [name for name, state in r.states(manifest).items() if state != "done"]
    assert stale == ["quantize", "benchmark"]


def test_distill_depends_on_adapt_only_for_methods_that_need_it(tmp_path):
    fake = {"stages": {"teacher": {"outputs": [{"sha256": "t"}]}, "adapt": {"outputs": [{"sha256": "a"}]}}}
    changed = {"stages": {**fake["stages"], "adapt": {"outputs": [{"sha256": "b"}]}}}
    for method, depends in (("kd", False), ("student", False), ("ama", True)):
        cfgs = [config.load("smoke", [f"distill.method={method}", f"adapt.lr={lr}"]) for lr in (0.05, 0.01)]
        prints = {runner_mod.Runner(c, RunDir(tmp_path / "run"), Console(quiet=True)).fingerprint("distill", m)
                  for c in cfgs for m in (fake, changed)}
        assert (len(prints) > 1) == depends, method


def test_the_students_budget_does_not_retrain_the_module_but_its_shape_does(tmp_path):
    manifest = {"stages": {"teacher": {"outputs": [{"sha256": "t"}]}}}

    def adapt_print(*sets):
        cfg = config.load("smoke", list(sets))
        return runner_mod.Runner(cfg, RunDir(tmp_path / "run"), Console(quiet=True)).fingerprint("adapt", manifest)

    base = adapt_print()
    assert adapt_print("student.epochs=7", "student.lr=0.01", "student.batch_size=32") == base
    assert adapt_print("student.width=0.5") != base
    assert adapt_print("student.arch=resnet20") != base
    assert adapt_print("adapt.lr=0.01") != base


def test_moving_the_decode_cache_retrains_nothing_but_a_data_setting_does(tmp_path):
    def teacher_print(*sets):
        cfg = config.load("smoke", list(sets))
        return runner_mod.Runner(cfg, RunDir(tmp_path / "run"), Console(quiet=True)).fingerprint("teacher",
                                                                                                {"stages": {}})

    base = teacher_print()
    moved = {teacher_print(f"data.cache_dir={tmp_path / name}") for name in ("a", "b")}
    assert moved == {base}
    assert teacher_print("data.val_fraction=0.2") != base


def test_restoring_onto_the_same_hard_link_leaves_no_temp_file(tmp_path):
    """rename() of one link onto another link of the same file does nothing, leaving the temp name behind."""
    import os

    from pipeline.run import cache as runcache

    src, dst = tmp_path / "object", tmp_path / "run" / "model.onnx"
    dst.parent.mkdir()
    src.write_bytes(b"model")
    os.link(src, dst)
    runcache._link_or_copy(src, dst)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["model.onnx"]


def test_a_stage_retrained_to_the_same_weights_leaves_the_next_stages_done(tmp_path):
    """The teacher's log and curves hold timings that differ on every rerun; only its weights feed adapt."""
    def manifest(weights, log):
        return {"stages": {"teacher": {"outputs": [{"path": "teacher/model.pt", "sha256": weights},
                                                   {"path": "teacher/metrics.jsonl", "sha256": log},
                                                   {"path": "teacher/curves.png", "sha256": log}]}}}

    r = runner_mod.Runner(config.load("smoke"), RunDir(tmp_path / "run"), Console(quiet=True))
    first = r.fingerprint("adapt", manifest("w", "timings 1"))
    assert r.fingerprint("adapt", manifest("w", "timings 2")) == first
    assert r.fingerprint("adapt", manifest("other weights", "timings 1")) != first


def test_a_file_only_the_previous_variant_made_leaves_the_folder_and_comes_back_with_it(cli, smoke_run, tmp_path):
    """With distill.baseline false the folder kept the student alone of the earlier config, and the benchmark
    measured it and the report drew 'distillation gained' from it; the run-cache keeps it for switching back."""
    from pipeline.export import inventory

    run = tmp_path / "run"
    assert cli(*smoke_run, "distill").exit_code == 0
    alone = (run / "distill" / "baseline.pt").read_bytes()
    assert cli(*smoke_run, "--set", "distill.baseline=false", "distill").exit_code == 0
    assert not (run / "distill" / "baseline.pt").exists()
    back = cli(*smoke_run, "distill")
    assert "distill: restored from the run-cache" in back.output
    assert (run / "distill" / "baseline.pt").read_bytes() == alone
    # a file the manifest does not list (one put back by hand, or one the cache no longer held) is not the run's
    manifest = RunDir(run).manifest()
    assert "student_alone_fp32" in {a["artifact"] for a in inventory.artifacts(run, manifest)}
    manifest["stages"]["distill"]["outputs"] = [o for o in manifest["stages"]["distill"]["outputs"]
                                                if o["path"] != "distill/baseline.pt"]
    assert "student_alone_fp32" not in {a["artifact"] for a in inventory.artifacts(run, manifest)}
    assert inventory.run_info(run, manifest) != inventory.run_info(run, RunDir(run).manifest())


def test_a_stage_reads_an_optional_upstream_file_only_where_the_manifest_lists_it(tmp_path):
    """The QAT fine-tune took distill/teacher_logits.pt from the folder even where the distill stage of this
    config had not written it (augmented students cache nothing): the logits of an earlier teacher."""
    run = RunDir(tmp_path / "run")
    run.create()
    (run.stage_dir("distill") / "teacher_logits.pt").write_bytes(b"an earlier teacher's")
    ctx = runner_mod.Context(config.load("smoke"), run, "quantize", "fp", Console(quiet=True))
    assert ctx.recorded("distill", "teacher_logits.pt") is None
    run.record("distill", {"outputs": [{"path": "distill/teacher_logits.pt", "sha256": "x", "bytes": 1}]})
    assert ctx.recorded("distill", "teacher_logits.pt") == run.root / "distill" / "teacher_logits.pt"


def test_force_before_from_is_refused_and_status_calls_a_stage_this_config_skips_not_used(cli, smoke_run, tmp_path):
    """'--from export --force distill' exited 0 without rerunning distill; status called adapt stale where
    'compress all' skips it as not read by kd."""
    assert cli(*smoke_run, "distill").exit_code == 0
    forced = cli(*smoke_run, "all", "--from", "distill", "--to", "distill", "--force", "teacher")
    assert forced.exit_code == 2 and "--force teacher comes before the first stage selected (distill)" in forced.output
    status = cli(*smoke_run, "--set", "distill.method=kd", "--set", "teacher.lr=0.02", "status")
    row = next(line for line in status.output.splitlines() if line.startswith("│ adapt"))
    assert "not used" in row, status.output


def test_all_does_not_end_with_an_earlier_configs_benchmark_table(cli, smoke_run, tmp_path):
    """'compress all --to adapt' with a new setting printed the previous benchmark table as if it were the result."""
    (tmp_path / "run" / "benchmark").mkdir(parents=True)
    (tmp_path / "run" / "benchmark" / "results.json").write_text("{}")  # an earlier config's, never read here
    result = cli(*smoke_run, "all", "--to", "teacher")
    assert result.exit_code == 0, result.output
    assert "benchmark is missing" in result.output and "holds an earlier config's results" in result.output


def test_a_setting_that_does_not_change_the_exported_model_leaves_quantize_done(cli, smoke_run, tmp_path):
    """The ONNX file carried a hash of the whole config, so export.parity_images (a check, not the model) changed
    the file and reran quantize and benchmark (simplify reruns: its parity check reads that section)."""
    cheap = ["--set", "quantize.tflite=[]", "--set", "quantize.targets=[x86]"]
    assert cli(*smoke_run, *cheap, "quantize").exit_code == 0
    onnx = (tmp_path / "run" / "export" / "onnx_fp32.onnx").read_bytes()
    again = cli(*smoke_run, *cheap, "--set", "export.parity_images=16", "quantize")
    assert again.exit_code == 0 and "export: done in" in again.output
    assert "quantize: up to date, skipped" in again.output, again.output
    assert (tmp_path / "run" / "export" / "onnx_fp32.onnx").read_bytes() == onnx
