"""`pip install <checkout>` (not editable) gives a working tool: the wheel holds every module of the source tree
and the shipped configs, and `-c smoke` finds them from the installed package."""
import shutil
import subprocess
import sys
import zipfile

from pipeline import config
from pipeline.run import codegraph

ROOT = codegraph.ROOT


def test_the_wheel_holds_every_module_and_the_shipped_configs_and_finds_them(tmp_path):
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ there
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("configs", "pipeline", "stages", "deploy"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("compress-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())

    sources = {str(p.relative_to(ROOT)) for pkg in ("pipeline", "stages", "deploy") for p in (ROOT / pkg).rglob("*.py")}
    assert sources - names == set(), "pyproject.toml's package list misses these"
    shipped = sorted(p.name for p in config.CONFIG_DIR.glob("*.yaml"))
    assert "smoke.yaml" in shipped
    assert {f"pipeline/configs/{n}" for n in shipped} <= names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    found = subprocess.run([sys.executable, "-c", "from pipeline import config; print(config.resolve_path('smoke'))"],
                           cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, check=True).stdout.strip()
    assert found == str(site / "pipeline" / "configs" / "smoke.yaml")
