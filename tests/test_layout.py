"""The layout holds: no import cycles between modules or between packages, the device runner ships alone, and
each stage's fingerprint follows only the code it runs (pipeline/run/codegraph.py walks the same imports)."""
import ast

from pipeline.run import codegraph

ROOT = codegraph.ROOT


def _modules() -> list[str]:
    out = []
    for pkg in codegraph.PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))
    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def _package(module: str) -> str:
    """pipeline's subpackages are one node each; its root modules stand alone; stages and deploy are one each."""
    parts = module.split(".")
    if parts[0] != "pipeline" or len(parts) == 1:
        return parts[0]
    if (ROOT / "pipeline" / parts[1]).is_dir():
        return ".".join(parts[:2])
    return module


def test_no_import_cycles_between_modules():
    graph = {m: codegraph.imports(m) for m in _modules()}
    assert _cycles(graph) == []


def test_no_import_cycles_between_packages():
    graph: dict[str, set[str]] = {}
    for m in _modules():
        others = {_package(i) for i in codegraph.imports(m)} - {_package(m)}
        graph.setdefault(_package(m), set()).update(others)
    assert _cycles(graph) == []


def test_the_device_runner_imports_only_numpy_the_standard_library_and_the_runtimes():
    import sys

    tree = ast.parse((ROOT / "deploy" / "runner.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    tops = {n.split(".")[0] for n in names}
    allowed = {"numpy", "onnxruntime", "ai_edge_litert", "tflite_runtime", "psutil"}
    assert tops - allowed <= set(sys.stdlib_module_names), tops - allowed - set(sys.stdlib_module_names)
    assert not codegraph.imports("deploy.runner")


def test_deploy_imports_nothing_from_the_stages():
    for m in _modules():
        if m.startswith("deploy"):
            assert not {i for i in codegraph.imports(m) if i.startswith("stages")}, m


def test_the_teacher_stage_runs_only_what_training_needs():
    teacher = set(codegraph.closure("stages.teacher"))
    assert {"pipeline.train.engine", "pipeline.data", "pipeline.models"} <= teacher
    unrelated = {"pipeline.run.cache", "pipeline.run.rundir", "pipeline.run.runner", "pipeline.config",
                 "pipeline.export.formats", "pipeline.report.write", "pipeline.data.imagefolder",
                 "pipeline.data.photo_scan", "pipeline.data.pixels", "deploy.android"}
    assert not teacher & unrelated, teacher & unrelated


def test_the_photo_decoder_is_in_a_stage_fingerprint_only_for_a_photo_folder(tmp_path):
    from rich.console import Console

    from pipeline import config
    from pipeline.run import runner as runner_mod
    from pipeline.run.rundir import RunDir

    def teacher_code(*overrides):
        r = runner_mod.Runner(config.load("smoke", list(overrides)), RunDir(tmp_path / "run"), Console(quiet=True))
        return r.chosen_modules("stages.teacher")

    assert teacher_code() == ("pipeline.data.synthetic",)
    assert teacher_code("data.dataset=imagefolder", f"data.root={tmp_path}") == ("pipeline.data.imagefolder",)
    assert "pipeline.data.imagefolder" not in codegraph.closure("pipeline.data.synthetic")


def test_the_adapt_stage_does_not_run_the_distillation_methods():
    adapt = codegraph.closure("stages.adapt")
    assert "pipeline.distill.adapter" in adapt
    assert not [m for m in adapt if m.startswith("pipeline.distill.methods")]
