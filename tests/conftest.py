"""Shared fixtures: the CLI through Typer's CliRunner, and a smoke-config run directory."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pipeline.cli import app


@pytest.fixture(autouse=True)
def _own_decode_cache(tmp_path_factory, monkeypatch):
    """Decoded photo folders go to a per-session folder, never the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.fixture
def cli():
    """Call ``compress`` in-process: ``cli("-c", "smoke", "all")`` -> click Result (exit_code, output)."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args))
    return invoke


@pytest.fixture
def smoke_run(tmp_path):
    """Global options for a smoke-config run in a fresh folder."""
    return ["-c", "smoke", "-r", str(tmp_path / "run")]
