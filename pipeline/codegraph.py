"""The source files a stage runs: the modules of this project it imports, directly or through others.

A stage's fingerprint hashes these files, so editing a helper makes exactly the stages that use it stale.
They are found from the import statements in the source (those inside functions too, where the heavy imports
live), not from a hand-kept list. Two dynamic patterns are covered: a string literal that names one of our
modules (``python -m pipeline.x`` in a subprocess) counts as an import, and a package whose ``__init__`` loads
its members by name with ``importlib.import_module`` (a registry such as pipeline.distillers) counts as
importing every module of that package. Python's own modulefinder was not used: it follows only top-level code paths it
can execute symbolically and reports third-party modules too, which would make fingerprints depend on site-packages.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGES = ("pipeline", "stages", "deploy")
ROOT = Path(__file__).resolve().parent.parent


def module_file(name: str, root: Path) -> Path | None:
    """The source file of one of our modules, or None for anything else (stdlib, third party, attributes)."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = root.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=None)
def _imported_names(path: Path, name: str) -> frozenset[str]:
    tree = ast.parse(path.read_bytes(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(PACKAGES) \
                and all(part.isidentifier() for part in node.value.split(".")):  # not an f-string's "pkg." part
            found.add(node.value)  # a module run by name, e.g. [sys.executable, "-m", "pipeline.tf_translate"]
    if path.name == "__init__.py" and "import_module(" in path.read_text():
        found.update(f"{name}.{p.stem}" for p in path.parent.glob("*.py") if p.stem != "__init__")
    return frozenset(found)


def closure(module: str) -> dict[str, Path]:
    """Every module of this project that importing ``module`` runs (parent packages included), by name."""
    return _closure(module, ROOT)


@functools.lru_cache(maxsize=None)
def _closure(module: str, root: Path) -> dict[str, Path]:
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for prefix in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):  # importing a.b runs a/__init__
            path = module_file(prefix, root)
            if path is not None and prefix not in seen:
                seen[prefix] = path
                todo.extend(_imported_names(path, prefix))
    return seen


def code_hash(module: str) -> str:
    """sha256 over the sources of ``closure(module)``, in name order."""
    digest = hashlib.sha256()
    for name, path in sorted(closure(module).items()):
        digest.update(f"{name}\0".encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
