"""precision: auto picks bf16 on a CPU only where the hardware computes it and the net has no depthwise convs."""
import pytest
import torch

from pipeline import models
from pipeline.errors import UserError
from pipeline.train import precision

CPU = torch.device("cpu")


def _cpu(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize("avx512_bf16,amx,expected", [(False, False, "fp32"), (True, False, "bf16"),
                                                      (False, True, "bf16")])
def test_auto_needs_bf16_in_hardware(monkeypatch, avx512_bf16, amx, expected):
    _cpu(monkeypatch, avx512_bf16, amx)
    assert precision.resolve_precision("auto", CPU, models.create("resnet8", 1, 10)) == expected


def test_auto_keeps_depthwise_nets_in_fp32(monkeypatch):
    _cpu(monkeypatch, True, True)
    assert precision.has_depthwise(models.create("mobilenetv2", 1, 10))
    assert not precision.has_depthwise(models.create("resnet8", 1, 10))
    assert precision.resolve_precision("auto", CPU, models.create("mobilenetv2", 1, 10)) == "fp32"
    assert precision.resolve_precision("auto", CPU) == "bf16"  # no model given: the hardware decides


def test_explicit_precision_is_kept(monkeypatch):
    _cpu(monkeypatch, False, False)
    assert precision.resolve_precision("bf16", CPU, models.create("mobilenetv2", 1, 10)) == "bf16"
    with pytest.raises(UserError, match="unknown precision"):
        precision.resolve_precision("int4", CPU)


def test_missing_probes_mean_fp32(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert precision.resolve_precision("auto", CPU, models.create("resnet8", 1, 10)) == "fp32"


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
