"""The source files a stage runs: the modules of this project it imports, directly or through others.

A stage's fingerprint hashes these files, so editing a helper makes exactly the stages that use it stale.
They are found from the import statements in the source (those inside functions too, where the heavy imports
live), not from a hand-kept list. Imports under ``if typing.TYPE_CHECKING:`` run nothing and are left out. A
dotted string literal that names one of our modules (``python -m pipeline.export.litert_convert`` in a
subprocess) counts as an import. A module chosen by a config value at run time (the data source) is not an
import at all: the runner adds it to the stage's modules for the config at hand (``code_hash``'s ``extra``).
Python's own modulefinder was not used: it follows only top-level code paths it can execute symbolically and
reports third-party modules too, which would make fingerprints depend on site-packages.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGES = ("pipeline", "stages", "deploy")
ROOT = Path(__file__).resolve().parent.parent.parent


def module_file(name: str, root: Path | None = None) -> Path | None:
    """The source file of one of our modules, or None for anything else (stdlib, third party, attributes)."""
    root = root or ROOT
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = root.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if not _type_checking(child))


@functools.lru_cache(maxsize=None)
def imported_names(path: Path, name: str) -> frozenset[str]:
    """The dotted names module ``name`` (source ``path``) imports, ours and others'."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                and node.value.startswith(PACKAGES) and all(p.isidentifier() for p in node.value.split(".")):
            found.add(node.value)  # a module run by name: [sys.executable, "-m", "pipeline.export.litert_convert"]
    return frozenset(found)


def imports(name: str, root: Path | None = None) -> set[str]:
    """Our modules that module ``name`` imports by a statement (parent packages not counted)."""
    out = set()
    for dotted in imported_names(module_file(name, root), name):
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):  # `from pkg import name`: the module pkg.name if it exists, else pkg
            candidate = ".".join(parts[:i])
            if module_file(candidate, root) is not None:
                out.add(candidate)
                break
    out.discard(name)
    return out


def closure(module: str, root: Path | None = None) -> dict[str, Path]:
    """Every module of this project that importing ``module`` runs (parent packages included), by name."""
    return dict(_closure(module, root or ROOT))


@functools.lru_cache(maxsize=None)
def _closure(module: str, root: Path) -> tuple[tuple[str, Path], ...]:
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for prefix in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):  # importing a.b runs a/__init__
            path = module_file(prefix, root)
            if path is not None and prefix not in seen:
                seen[prefix] = path
                todo.extend(imported_names(path, prefix))
    return tuple(sorted(seen.items()))


def code_hash(module: str, extra: tuple[str, ...] = ()) -> str:
    """sha256 over the sources of ``closure(module)`` and of each module in ``extra``, in name order."""
    files: dict[str, Path] = {}
    for name in (module, *extra):
        files.update(closure(name))
    digest = hashlib.sha256()
    for name, path in sorted(files.items()):
        digest.update(f"{name}\0".encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
