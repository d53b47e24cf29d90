"""precision: auto on a CPU is a timed probe (pipeline/train/probe.py): its choice follows the measured step times,
is cached per machine and reused, recorded in the checkpoint and the manifest, and kept by a resumed (even
kill -9'd) training; forced precisions never probe. The probe's clock is faked so that the choice is fixed; the
training steps it times are real."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from killing import kill_after_epoch as kill_after_epoch_of
from rich.console import Console

from pipeline import data, models
from pipeline.config import DataConfig, TrainConfig
from pipeline.errors import UserError
from pipeline.train import precision, probe
from pipeline.train.engine import Classifier, fit

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
DATA = DataConfig(dataset="synthetic", synthetic_train=256, synthetic_test=64, synthetic_channels=1,
                  synthetic_size=16, val_fraction=0.25)


def fake_timing(fp32_s: float, bf16_s: float, calls: list | None = None):
    """Make every probe step in fp32 take ``fp32_s`` and in bf16 ``bf16_s`` on the probe's clock (the steps
    themselves still run). Returns (clock, autocast) for probe.clock and probe.autocast."""
    now = [0.0]

    def clock():
        return now[0]

    @contextlib.contextmanager
    def timed_autocast(device, prec):
        if calls is not None:
            calls.append(prec)
        with precision.autocast(device, prec):
            yield
        now[0] += fp32_s if prec == "fp32" else bf16_s
    return clock, timed_autocast


def _fake(monkeypatch, fp32_s: float, bf16_s: float) -> list:
    calls: list = []
    clock, ac = fake_timing(fp32_s, bf16_s, calls)
    monkeypatch.setattr(probe, "clock", clock)
    monkeypatch.setattr(probe, "autocast", ac)
    return calls


def _fit(out: Path, prec: str = "auto", epochs: int = 1, width: float = 0.5):
    ds = data.load(DATA)
    torch.manual_seed(0)
    model = models.create("resnet8", 1, 4, width)
    cfg = TrainConfig(arch="resnet8", width=width, epochs=epochs, batch_size=32, lr=0.05, precision=prec,
                      channels_last=False, bn_recalibration_images=0)
    return fit(Classifier(model), model, ds, cfg, out, seed=0, fingerprint="f", console=Console(quiet=True))


def test_choice_rule():
    assert probe.choose(1.0, 1.0 / 1.05) == "bf16"
    assert probe.choose(1.0, 0.97) == "fp32"  # under the 5% margin
    assert probe.choose(1.0, 1.5) == "fp32"


def test_auto_follows_the_probe_records_it_and_caches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    calls = _fake(monkeypatch, 1.0, 0.5)
    first = _fit(tmp_path / "a")
    assert calls and set(calls) == {"fp32", "bf16"}
    assert first.precision == "bf16"
    assert first.probe["choice"] == "bf16" and not first.probe["cached"]
    assert (first.probe["fp32_step_s"], first.probe["bf16_step_s"]) == (1.0, 0.5)
    state = torch.load(tmp_path / "a/last.pt", weights_only=True)
    assert state["precision"] == "bf16" and state["precision_probe"]["bf16_step_s"] == 0.5
    assert len(list(probe.cache_dir().glob("*.json"))) == 1
    # a second training of the same net and input reuses the cached result: no step is timed again
    calls.clear()
    monkeypatch.setattr(probe, "measure", lambda *a: pytest.fail("probed again despite the cache"))
    second = _fit(tmp_path / "b")
    assert not calls and second.precision == "bf16" and second.probe["cached"]


def test_a_cpu_without_bf16_hardware_is_probed_once_for_every_net(tmp_path, monkeypatch):
    """Emulated bf16 (>= EMULATED times slower) marks the machine: another net trains in fp32 unprobed. A merely
    slower bf16 (2x, as on a BF16-less AVX-512 Xeon) does not: every net is still probed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _fake(monkeypatch, 1.0, 10.0)
    assert _fit(tmp_path / "a").precision == "fp32"
    monkeypatch.setattr(probe, "measure", lambda *a: pytest.fail("probed again on a machine without bf16 hardware"))
    other = _fit(tmp_path / "b", width=0.25)
    assert other.precision == "fp32" and other.probe["cached"] and other.probe["probe_s"] == 0.0
    assert "no bf16 hardware" in probe.describe(other.probe)

    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg2"))
    calls = _fake(monkeypatch, 1.0, 2.0)
    _fit(tmp_path / "c")
    calls.clear()
    assert _fit(tmp_path / "d", width=0.25).precision == "fp32" and calls  # the second net was probed


def test_a_kernel_cap_is_another_machine_for_the_probe(tmp_path, monkeypatch):
    """A run with PyTorch's and oneDNN's kernels capped at AVX2 (bf16 emulated there) marks only the capped
    machine: the same CPU without the cap is probed again, and the keys of uncapped runs stay as they were."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for name in probe.KERNEL_CAPS:
        monkeypatch.delenv(name, raising=False)
    plain = probe.machine_key()
    assert "kernel_caps" not in plain
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert probe.machine_key()["kernel_caps"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    _fake(monkeypatch, 1.0, 10.0)
    assert _fit(tmp_path / "a").precision == "fp32"  # emulated under the cap: the capped machine is marked
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    calls = _fake(monkeypatch, 1.0, 0.5)
    assert _fit(tmp_path / "b").precision == "bf16" and calls  # probed again without the cap


def test_a_slower_bf16_keeps_fp32(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _fake(monkeypatch, 1.0, 0.98)
    result = _fit(tmp_path / "a")
    assert result.precision == "fp32" and result.probe["choice"] == "fp32"
    assert "under the 5% margin" in probe.describe(result.probe)


def test_a_decisive_warm_up_ends_the_probe(tmp_path, monkeypatch):
    """bf16 emulated without bf16 hardware is ~10x slower: the warm-up's warm steps settle it; a near tie takes
    every round."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    calls = _fake(monkeypatch, 1.0, 10.0)
    assert _fit(tmp_path / "a").precision == "fp32"
    assert len(calls) == 2 * probe.WARMUP
    calls = _fake(monkeypatch, 1.0, 0.4)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg1"))
    assert _fit(tmp_path / "c").precision == "bf16" and len(calls) == 2 * probe.WARMUP
    calls = _fake(monkeypatch, 1.0, 0.98)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg2"))
    _fit(tmp_path / "b")
    assert len(calls) == 2 * (probe.WARMUP + probe.ROUNDS * probe.STEPS)


@pytest.mark.parametrize("prec", ["fp32", "bf16"])
def test_forced_precisions_skip_the_probe(tmp_path, monkeypatch, prec):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(probe, "measure", lambda *a: pytest.fail("a forced precision was probed"))
    result = _fit(tmp_path / "a", prec)
    assert result.precision == prec and result.probe == {}
    assert torch.load(tmp_path / "a/last.pt", weights_only=True)["precision"] == prec
    assert not probe.cache_dir().exists()


def test_unknown_precision_is_refused():
    with pytest.raises(UserError, match="unknown precision"):
        precision.resolve_precision("int4", CPU)
    assert precision.resolve_precision("auto", CPU) is None  # the probe decides
    assert precision.inference_precision("auto", CPU) == "fp32"


def test_stages_share_the_cache_and_record_the_choice(cli, tmp_path, monkeypatch):
    """Two runs' teacher stages: the first probes, the second reuses it; both manifests record it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    calls = _fake(monkeypatch, 1.0, 0.5)
    for name in ("one", "two"):
        got = cli("-c", "smoke", "-r", str(tmp_path / name), "--set", "teacher.precision=auto",
                  "--set", "teacher.epochs=1", "teacher")
        assert got.exit_code == 0, got.output
        metrics = json.loads((tmp_path / name / "manifest.json").read_text())["stages"]["teacher"]["metrics"]
        assert metrics["precision"] == "bf16" and metrics["precision_probe"]["cached"] == (name == "two")
        assert ("cached" in got.output) == (name == "two") and "training in bf16" in got.output
        if name == "one":
            probed, calls[:] = len(calls), []
    assert probed and not calls
    assert torch.load(tmp_path / "one/teacher/model.pt", weights_only=True)["precision"] == "bf16"


SCRIPT = """
import sys, time, torch
sys.path[:0] = [{root!r}, {root!r} + "/tests"]  # the pipeline, and the tests' own helpers
from pathlib import Path
from rich.console import Console
from test_precision import DATA, fake_timing
from pipeline import data, models
from pipeline.config import TrainConfig
from pipeline.train import probe
from pipeline.train.engine import Classifier, fit
probe.clock, probe.autocast = fake_timing({fp32_s}, {bf16_s}, calls := [])
ds = data.load(DATA)
torch.manual_seed(0)
model = models.create("resnet8", 1, 4, 0.5)
cfg = TrainConfig(arch="resnet8", width=0.5, epochs=3, batch_size=32, lr=0.05, precision="auto",
                  channels_last=False, bn_recalibration_images=64)
result = fit(Classifier(model), model, ds, cfg, Path({out!r}), seed=0, fingerprint="f", console=Console(quiet=True),
             on_epoch=lambda row: (print("epoch", row["epoch"], flush=True),
                                   time.sleep({pause}) if row["epoch"] == 3 else None))  # kill before epoch 3 saves
print("probed" if calls else "not probed", result.precision, flush=True)
"""


def _run(out: Path, xdg: Path, fp32_s: float, bf16_s: float, kill_after_epoch: int | None = None) -> str:
    """Train in a subprocess (probe timings faked); kill -9 it during the epoch after ``kill_after_epoch``."""
    code = SCRIPT.format(root=str(ROOT), out=str(out), fp32_s=fp32_s, bf16_s=bf16_s,
                         pause=30 if kill_after_epoch is not None else 0)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(xdg)},
                            start_new_session=True)
    if kill_after_epoch is not None:
        lines = kill_after_epoch_of(proc, out / "last.pt", kill_after_epoch)
    else:
        lines = [line.strip() for line in proc.stdout]
    proc.wait(timeout=300)
    if kill_after_epoch is None:
        assert proc.returncode == 0, lines
    return lines[-1] if lines else ""


def test_kill_9_resumes_in_the_precision_it_started_in(tmp_path):
    """The probe picks bf16; the run is killed during epoch 3. The resumed process would pick fp32 (its probe is
    made to find fp32 faster and the cache is gone) but keeps bf16 from the checkpoint, without probing, and ends
    with the weights of an uninterrupted bf16 run."""
    assert _run(tmp_path / "whole", tmp_path / "xdg-whole", 1.0, 0.5) == "probed bf16"
    _run(tmp_path / "cut", tmp_path / "xdg-cut", 1.0, 0.5, kill_after_epoch=2)
    cut = torch.load(tmp_path / "cut/last.pt", weights_only=True)
    assert cut["epoch"] == 1 and cut["precision"] == "bf16"  # killed during the third epoch
    assert _run(tmp_path / "cut", tmp_path / "xdg-empty", 1.0, 2.0) == "not probed bf16"
    want = torch.load(tmp_path / "whole/last.pt", weights_only=True)["task"]
    got = torch.load(tmp_path / "cut/last.pt", weights_only=True)["task"]
    assert all(torch.equal(got[k], v) for k, v in want.items())


def test_channels_last_is_dropped_where_onednn_breaks(tmp_path):
    """oneDNN #6035: a 1x1 stride-2 conv with < 16 input channels corrupts memory in NHWC backward (on one
    thread it aborts the process, so the run is a subprocess). resnet8 at width 0.25 has 4- and 8-channel ones."""
    import os
    import subprocess
    import sys

    assert precision.channels_last_breaks(models.create("resnet8", 3, 4, 0.25))
    assert not precision.channels_last_breaks(models.create("resnet8", 3, 4, 1.0))
    frozen = models.create("resnet8", 3, 4, 0.25).requires_grad_(False)  # a frozen teacher has no weight grads
    assert not precision.channels_last_breaks(frozen)
    cmd = [sys.executable, "-m", "pipeline.cli", "-c", "smoke", "-r", str(tmp_path / "run"), "--set",
           "teacher.channels_last=true", "--set", "teacher.width=0.25", "--set", "teacher.epochs=1", "--set",
           "data.synthetic_channels=3", "--set", "data.synthetic_train=256", "teacher"]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "channels_last off" in run.stdout
