"""`compress compare` on two seeds of a tiny smoke config, and distillation under DDP (gloo, two processes)."""
import json
import socket

import pytest
import torch
import torch.multiprocessing as mp
from test_distill_stages import TINY


@pytest.mark.slow
def test_compare_two_seeds_writes_every_file(cli, tmp_path):
    sets = [a for t in [*TINY, "compare.methods=[student,kd,ama]", "compare.seeds=2"] for a in ("--set", t)]
    result = cli("-c", "smoke", "-r", str(tmp_path), *sets, "compare")
    assert result.exit_code == 0, result.output
    out = tmp_path / "compare"
    summary = json.loads((out / "compare.json").read_text())
    assert set(summary["methods"]) == {"student", "kd", "ama"}
    assert all(len(runs) == 2 for runs in summary["runs"].values())
    assert summary["methods"]["student"]["delta_top1"] == 0.0
    assert "| ama |" in (out / "compare.md").read_text()
    assert (out / "compare.png").stat().st_size > 1000
    again = cli("-c", "smoke", "-r", str(tmp_path), *sets, "compare")  # every run is reused, nothing retrains
    assert again.exit_code == 0 and "compare: ama, seed" not in again.output


def _ddp_worker(rank: int, port: int, out: str):
    import os

    from rich.console import Console

    from pipeline import config, data, models
    from pipeline.distill import adaptive
    from pipeline.distill.train import train_student

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = config.load("smoke", [*TINY, "device=cpu"])
    ds = data.load(cfg.data, cfg.seed)
    torch.manual_seed(0)
    teacher = models.create(cfg.teacher.arch, ds.channels, len(ds.classes), cfg.teacher.width).eval()
    student = models.create(cfg.student.arch, ds.channels, len(ds.classes), cfg.student.width)
    adapted = adaptive.build(teacher, student, [1], ds.channels, ds.size)
    r = train_student(cfg, "ama", 0, ds, teacher, adapted, __import__("pathlib").Path(out) / f"r{rank}",
                      fingerprint="ddp", console=Console(quiet=True), label="ddp")
    # parameters only: BatchNorm running stats are each rank's own (DDP broadcasts them before each step)
    params = {k: v.detach() for k, v in r["model"].named_parameters()}
    torch.save({"state": params, "history": r["history"]}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_distill_under_ddp_gloo_two_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in range(2))
    for k, v in r0["state"].items():  # DDP kept both replicas' weights identical
        assert torch.equal(v, r1["state"][k]), k
    assert len(r0["history"]) == 1 and r0["history"][0]["train_loss"] > 0
    assert (tmp_path / "r0" / "metrics.jsonl").exists() and not (tmp_path / "r1" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_ama_study_never_retrains_a_stale_base(cli, tmp_path):
    """The study's runs all hang on ROOT/base's teacher and module: with other settings it stops, exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    sets = [a for t in TINY for a in ("--set", t)]
    assert cli("-c", "smoke", "-r", str(tmp_path / "base"), *sets, "adapt").exit_code == 0
    teacher = (tmp_path / "base" / "teacher" / "model.pt").read_bytes()
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "ama_study.py"
    cmd = [sys.executable, str(script), "--root", str(tmp_path), "-c", "smoke", *sets, "--seeds", "1"]
    stale = subprocess.run([*cmd, "--set", "teacher.lr=0.07", "--report-only"], capture_output=True, text=True)
    assert stale.returncode == 2 and "teacher and adapt finished with other code or settings" in stale.stderr
    assert (tmp_path / "base" / "teacher" / "model.pt").read_bytes() == teacher  # untouched
    same = subprocess.run([*cmd, "--report-only"], capture_output=True, text=True)
    assert same.returncode == 0, same.stderr


@pytest.mark.slow
def test_ama_study_split_trains_each_seed_in_its_own_process_with_the_same_result(tmp_path):
    """--split runs every (entry, seed) as its own process; a seed so trained matches the one-process run."""
    import subprocess
    import sys
    from pathlib import Path

    sets = [a for t in TINY for a in ("--set", t)]
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "ama_study.py"
    base = [sys.executable, str(script), "-c", "smoke", *sets, "--seeds", "2", "--only", "16"]
    split = subprocess.run([*base, "--root", str(tmp_path / "split"), "--split", "--jobs", "2"],
                           capture_output=True, text=True)
    assert split.returncode == 0, split.stderr
    for entry, e in (("student", 0), ("kd", 1)):  # group 16 is (student, kd): 2 entries x 2 seeds, 4 processes
        for seed in (0, 1):
            log = (tmp_path / "split" / f"g16_{e}_{seed}.log").read_text()
            trained = {(m, k) for m in ("student", "kd") for k in (0, 1) if f"compare: {m}, seed {k}" in log}
            assert trained == {(entry, seed)}
    one = subprocess.run([*base, "--root", str(tmp_path / "one")], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    for entry in ("student", "kd"):
        for seed in (0, 1):
            got = [json.loads((tmp_path / r / "g16" / "compare" / entry / f"seed{seed}" / "result.json").read_text())
                   for r in ("split", "one")]
            assert got[0]["fingerprint"] == got[1]["fingerprint"]
            curves = [[(h["train_loss"], h["val_top1"]) for h in g["history"]] for g in got]  # not the timings
            assert got[0]["test_top1"] == got[1]["test_top1"] and curves[0] == curves[1]


def test_a_runs_fingerprint_sees_the_module_settings_only_where_the_method_uses_the_module(tmp_path):
    """A longer adaptation retrains ama, not kd or fitnets: their finished runs stay valid for the new module."""
    from pipeline import config
    from pipeline.compare import _fingerprint

    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "model.pt").write_bytes(b"weights")
    base, longer = (config.load("smoke", sets) for sets in ([], ["adapt.epochs=7"]))
    for method, moves in (("student", False), ("kd", False), ("fitnets", False), ("ama", True)):
        prints = {_fingerprint(c, method, method, 0, tmp_path, "code") for c in (base, longer)}
        assert (len(prints) == 2) == moves, method


def test_a_runs_fingerprint_follows_the_distill_stages_code(tmp_path):
    """Editing a method's file retrains its compare runs as it retrains the distill stage."""
    from pipeline import config
    from pipeline.compare import _fingerprint

    cfg = config.load("smoke")
    assert _fingerprint(cfg, "kd", "kd", 0, tmp_path, "a") != _fingerprint(cfg, "kd", "kd", 0, tmp_path, "b")
