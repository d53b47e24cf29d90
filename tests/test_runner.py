"""Skip / stale / force logic of the runner, on two throw-away stages that write small files."""
import importlib.util
import json

import pytest
from rich.console import Console

from pipeline import config
from pipeline.errors import UserError
from pipeline.run import runner as runner_mod
from pipeline.run.rundir import RunDir

STAGE_SOURCE = '''
from pipeline.errors import UserError

NAME = "{name}"
SECTIONS = {sections}
UPSTREAM = {upstream}
CALLS = []


def run(ctx):
    if ctx.cfg.seed == 7:
        raise UserError("seed 7 fails")
    CALLS.append(ctx.fingerprint)
    text = "seed %d" % ctx.cfg.seed
    for up in UPSTREAM:
        text += " <- " + ctx.input(up, "out.txt").read_text()
    out = ctx.dir / "out.txt"
    out.write_text(text)
    return [out]
'''


@pytest.fixture
def fake_stages(tmp_path, monkeypatch):
    return _fake(tmp_path, monkeypatch, ("seed",))


@pytest.fixture
def fake_stages_reading_data(tmp_path, monkeypatch):
    return _fake(tmp_path, monkeypatch, ("seed", "data", "teacher"))


def _fake(tmp_path, monkeypatch, sections):
    mods = {}
    for name, upstream in (("first", ()), ("second", ("first",))):
        path = tmp_path / f"{name}.py"
        path.write_text(STAGE_SOURCE.format(name=name, upstream=upstream, sections=sections))
        spec = importlib.util.spec_from_file_location(f"fake_{name}", path)
        mods[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[name])
    monkeypatch.setattr(runner_mod, "available", lambda: list(mods))
    monkeypatch.setattr(runner_mod, "load_stage", lambda name: mods[name])
    return mods


def _runner(tmp_path, *sets):
    cfg = config.load("smoke", list(sets))
    return runner_mod.Runner(cfg, RunDir(tmp_path / "run"), Console(quiet=True))


def test_second_run_skips_and_a_config_change_reruns_downstream(tmp_path, fake_stages):
    r = _runner(tmp_path)
    r.run_all(r.select())
    assert [len(m.CALLS) for m in fake_stages.values()] == [1, 1]
    r.run_all(r.select())
    assert [len(m.CALLS) for m in fake_stages.values()] == [1, 1]  # nothing changed: all skipped
    assert [row[1] for row in r.status_rows()] == ["done", "done"]

    changed = _runner(tmp_path, "seed=5")
    assert [row[1] for row in changed.status_rows()] == ["stale", "stale"]  # upstream change -> downstream stale
    changed.run_all(changed.select())
    assert (tmp_path / "run/second/out.txt").read_text() == "seed 5 <- seed 5"
    assert [len(m.CALLS) for m in fake_stages.values()] == [2, 2]


def test_tampered_output_makes_a_stage_stale(tmp_path, fake_stages):
    r = _runner(tmp_path)
    r.run_all(r.select())
    (tmp_path / "run/first/out.txt").write_text("edited by hand")
    assert [row[1] for row in r.status_rows()] == ["stale", "stale"]
    r.run_all(r.select())
    assert (tmp_path / "run/first/out.txt").read_text() == "seed 0"


def test_force_reruns_a_stage_and_everything_after(tmp_path, fake_stages):
    r = _runner(tmp_path)
    r.run_all(r.select())
    r.run_all(r.select(), force="second")
    assert [len(m.CALLS) for m in fake_stages.values()] == [1, 2]
    r.run_all(r.select(), force="first")
    assert [len(m.CALLS) for m in fake_stages.values()] == [2, 3]
    with pytest.raises(UserError, match="unknown stage 'secnd'"):
        r.run_all(r.select(), force="secnd")


def test_force_trains_from_scratch_not_from_the_resume_state(tmp_path, fake_stages):
    r = _runner(tmp_path)
    r.run_all(r.select())
    resume = tmp_path / "run/first/last.pt"
    resume.write_bytes(b"an epoch's state")
    r.run_all(r.select())
    assert resume.exists()  # nothing forced, nothing ran: kept
    r.run_all(r.select(), force="first")
    assert not resume.exists()


def test_a_failed_run_leaves_config_yaml_as_what_ran(tmp_path, fake_stages):
    r = _runner(tmp_path)
    r.run_all(r.select())
    failing = _runner(tmp_path, "seed=7")
    with pytest.raises(UserError, match="seed 7 fails"):
        failing.run_all(failing.select())
    assert (tmp_path / "run/config.yaml").read_text() == config.dump(r.cfg)


def test_a_changed_photo_folder_or_weights_file_makes_stages_stale(tmp_path, fake_stages_reading_data):
    import torch
    from PIL import Image

    photos = tmp_path / "photos"
    for label in ("cat", "dog"):
        (photos / label).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(photos / label / f"{i}.png")
    weights = tmp_path / "teacher.pt"
    torch.save({"w": torch.zeros(2)}, weights)
    sets = ("data.dataset=imagefolder", f"data.root={photos}", f"teacher.weights={weights}")
    r = _runner(tmp_path, *sets)
    r.run_all(r.select())
    states = lambda: [row[1] for row in _runner(tmp_path, *sets).status_rows()]  # noqa: E731 (a fresh process)
    assert states() == ["done", "done"]
    (photos / "notes.txt").write_text("not an image")
    assert states() == ["done", "done"]  # ignored files are not data
    Image.new("RGB", (8, 8)).save(photos / "dog" / "new.png")
    assert states() == ["stale", "stale"]
    r = _runner(tmp_path, *sets)
    r.run_all(r.select())
    torch.save({"w": torch.ones(2)}, weights)  # other weights at the same path
    assert states() == ["stale", "stale"]


def test_from_and_to(tmp_path, fake_stages):
    r = _runner(tmp_path)
    with pytest.raises(UserError, match="stage 'first' is not done"):
        r.run_all(r.select(start="second"))
    r.run_all(r.select(to="first"))
    assert [row[1] for row in r.status_rows()] == ["done", "missing"]
    r.run_all(r.select(start="second"))
    assert [row[1] for row in r.status_rows()] == ["done", "done"]
    changed = _runner(tmp_path, "seed=3")
    with pytest.raises(UserError, match="stage 'first' is stale"):
        changed.run_all(changed.select(start="second"))
    with pytest.raises(UserError, match="--force second comes after the last stage selected"):
        r.run_all(r.select(to="first"), force="second")


def test_manifest_records_outputs_timing_and_environment(tmp_path, fake_stages):
    r = _runner(tmp_path)
    r.run_all(r.select())
    entry = json.loads((tmp_path / "run/manifest.json").read_text())["stages"]["second"]
    assert entry["outputs"][0]["path"] == "second/out.txt"
    assert len(entry["outputs"][0]["sha256"]) == 64 and entry["outputs"][0]["bytes"] > 0
    assert entry["seconds"] >= 0 and "python" in entry["env"] and len(entry["fingerprint"]) == 64
    assert (tmp_path / "run/config.yaml").read_text() == config.dump(r.cfg)


def test_corrupt_manifest_is_a_clear_error(tmp_path, fake_stages):
    (tmp_path / "run").mkdir()
    (tmp_path / "run/manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="manifest.json is corrupt"):
        _runner(tmp_path).status_rows()


def test_a_stage_no_later_stage_reads_is_skipped(tmp_path, monkeypatch):
    """`all` runs only what the last stage reads, transitively: here 'third' reads 'first', so 'second' is
    neither run nor required by --from; 'compress second' still runs it."""
    mods = _fake(tmp_path, monkeypatch, ("seed",))
    path = tmp_path / "third.py"
    path.write_text(STAGE_SOURCE.format(name="third", upstream=("first",), sections=("seed",)))
    spec = importlib.util.spec_from_file_location("fake_third", path)
    mods["third"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mods["third"])
    r = _runner(tmp_path)
    r.run_all(r.select())
    assert [len(mods[n].CALLS) for n in ("first", "second", "third")] == [1, 0, 1]
    assert [row[1] for row in r.status_rows()] == ["done", "not used", "done"]
    r.run_all(r.select(start="third"), force="third")
    assert len(mods["third"].CALLS) == 2
    r.run_all(r.select(to="second"))
    assert [len(mods[n].CALLS) for n in ("first", "second", "third")] == [1, 1, 2]


@pytest.mark.parametrize(("method", "adapt"), [("ama", True), ("student", False), ("kd", False)])
def test_the_adapt_stage_runs_only_for_a_method_that_distils_through_it(tmp_path, method, adapt):
    r = _runner(tmp_path, f"distill.method={method}")
    assert ("adapt" in r.needed("benchmark")) is adapt
    assert {"teacher", "distill", "export", "simplify", "quantize", "benchmark"} <= r.needed("benchmark")
