"""The ``compress`` command line. No logic lives here: it parses, then calls the runner or a stage."""
from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from pipeline.cli_errors import STATE, Group, Terminated
from pipeline.errors import UserError
from pipeline.run import runner as runner_mod

console = Console()


app = typer.Typer(cls=Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, distill, quantize and benchmark a small image classifier.")


@app.callback()
def main_options(
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML file or shipped name "
                                                  "(smoke, default, paper).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override: section.key=value "
                                                      "(repeatable).")] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", "-r", help="Run folder "
                                                    "(default runs/<config name>).")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Run-cache folder, may be shared by "
                                                      "runs (default <run folder>/.cache).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
):
    STATE.config, STATE.overrides, STATE.run_dir, STATE.debug = config, list(set_ or []), run_dir, debug
    STATE.cache_dir = cache_dir


def _setup():
    """Resolved config, run directory and runner for the global options."""
    from pipeline import config as config_mod
    from pipeline.run.rundir import RunDir

    cfg = config_mod.load(STATE.config or "default", STATE.overrides)
    name = Path(STATE.config).stem if STATE.config else "default"
    run = RunDir(STATE.run_dir or Path("runs") / name, STATE.cache_dir)
    return cfg, run


def _run(to: Optional[str], start: Optional[str], force: Optional[str]) -> dict[str, str]:
    cfg, run = _setup()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from pipeline.train.devices import init_distributed

        init_distributed()
    main = runner_mod.is_main_process()  # under torchrun, ranks > 0 train alongside but write nothing
    with run.locked() if main else contextlib.nullcontext():
        runner = runner_mod.Runner(cfg, run, console if main else Console(quiet=True), STATE.debug)
        return runner.run_all(runner.select(to=to, start=start), force=force)


ForceOpt = Annotated[Optional[str], typer.Option("--force", help="Rerun this stage and every stage after it.")]


@app.command("all")
def all_(
    force: ForceOpt = None,
    start: Annotated[Optional[str], typer.Option("--from", help="First stage to run (earlier ones must be "
                                                 "done).")] = None,
    to: Annotated[Optional[str], typer.Option("--to", help="Last stage to run.")] = None,
):
    """Run every stage in order, skipping those whose inputs and config have not changed."""
    _print_report(_run(to, start, force))


def _print_report(states: dict[str, str] | None = None) -> None:
    """The benchmark table, when the run has one; with the stages' ``states`` after 'compress all', only when it
    measured this config's models: after '--to adapt' with a new setting it is an earlier config's."""
    cfg, run = _setup()
    if runner_mod.is_main_process() and (run.root / "benchmark" / "results.json").is_file():
        from pipeline.report import write
        if states is not None and states["benchmark"] != "done":
            console.print(f"benchmark is {states['benchmark']}: {run.root / 'benchmark'} holds an earlier config's "
                          "results; run 'compress all' to measure this one", highlight=False, markup=False)
            return
        console.print(write.rich_table(run.root / "benchmark", cfg.benchmark.max_drop))
        console.print(f"report: {run.root / 'benchmark' / 'report.md'}", highlight=False, markup=False)


@app.command()
def status():
    """Each stage: done, stale or missing; when it finished, how long it took, variants in the run-cache."""
    from rich.table import Table

    cfg, run = _setup()
    table = Table(title=f"run {escape(str(run.root))}")
    for col in ("stage", "state", "finished", "took", "cached"):
        table.add_column(col)
    colours = {"done": "green", "stale": "yellow", "missing": "red", "not used": "dim"}
    for name, state, finished, took, cached in runner_mod.Runner(cfg, run, console).status_rows():
        table.add_row(name, f"[{colours[state]}]{state}[/]", finished, took, cached)
    console.print(table)
    console.print(f"run-cache: {run.cache.root} ({run.cache.size() / 2**20:.1f} MB; 'compress gc' frees it)",
                  highlight=False, markup=False)
    if cfg.data.dataset == "imagefolder":
        from pipeline.data import imagefolder
        cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else imagefolder.default_cache_dir()
        entries, size = imagefolder.cache_usage(cache)
        console.print(f"decode cache: {cache} ({entries} decoded folder(s), {size / 2**20:.1f} MB; delete an entry "
                      "or the folder to free it)", highlight=False, markup=False)


@app.command()
def gc(keep: Annotated[int, typer.Option(min=0, help="Cached variants to keep per stage, newest first (the one "
                                         "the run folder uses is always kept).")] = 0):
    """Free the run-cache: keep only what the run folder uses (and the --keep newest variants of each stage)."""
    from pipeline.run.rundir import RunDir

    cfg, run = _setup()
    if not run.root.is_dir():
        raise UserError(f"run folder {run.root} does not exist; give the one to clean with --run-dir")
    with run.locked():
        current: dict[str, set[str]] = {}
        for root in run.cache.users() | {str(run.root.resolve())}:  # a shared cache keeps every run's in use
            if (Path(root) / "manifest.json").is_file():
                for name, e in RunDir(Path(root)).manifest()["stages"].items():
                    current.setdefault(name, set()).add(e.get("fingerprint"))
        removed, freed = run.cache.gc(keep, current)
    console.print(f"removed {removed} cached variant(s), freed {freed / 2**20:.1f} MB", highlight=False)


@app.command("config")
def show_config(keys: Annotated[bool, typer.Option("--keys", help="List every valid key.")] = False):
    """Print the resolved config (defaults + file + --set) as YAML."""
    from pipeline import config as config_mod

    if keys:
        console.print("\n".join(config_mod.all_keys()), highlight=False)
    else:
        console.print(config_mod.dump(config_mod.load(STATE.config or "default", STATE.overrides)), highlight=False)


@app.command()
def compare():
    """Train every method of the 'compare' section x its seeds on one budget; write compare.json/.md and PNGs."""
    from pipeline import compare as compare_mod

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each rank would take the run's lock and the others refuse
        raise UserError("compare trains in one process; run 'compress compare' without torchrun (torchrun scales "
                        "'compress all' and its stages)")
    cfg, run = _setup()
    with run.locked():
        compare_mod.run(cfg, run, console)


@app.command()
def inspect(path: Annotated[Path, typer.Argument(help="A .tflite or .onnx model file.")]):
    """Which ops of a model file run in int8 kernels: XNNPACK partitions of a TFLite file, or the graph ONNX
    Runtime optimizes an ONNX file into (quantize/dequantize pairs, float ops, int8 share of the MACs)."""
    from pipeline.export import int8_audit

    for line in int8_audit.inspect(path):
        console.print(line, highlight=False, soft_wrap=True, markup=False)


@app.command("report")
def report_cmd(add: Annotated[Optional[list[Path]], typer.Option("--add", help="results.json from a device "
                                                                 "(repeatable).")] = None):
    """Merge device results into report.md and pareto.png, and print the benchmark table."""
    from pipeline.report import write

    cfg, run = _setup()
    with run.locked():
        for path in write.add(run, list(add or []), cfg.benchmark.max_drop):
            console.print(f"wrote {path}", highlight=False, markup=False)
    _print_report()


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files (any size or mode).")],
    artifact: Annotated[Optional[str], typer.Option("--artifact", "-a", help="Model to run (default: the "
                                                    "recommended one).")] = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="Classes to show per image.")] = 3,
):
    """Classify image files with a model file of the run (resized and normalised from the file's metadata)."""
    from pipeline import predict as predict_mod

    cfg, run = _setup()
    name, results = predict_mod.predict(run.root, run.manifest(), images, artifact, top, cfg.benchmark.max_drop)
    console.print(f"[bold]{name}[/bold] ({escape(str(run.root))})", highlight=False)
    for image, classes in results:
        console.print(f"{image}: " + ", ".join(f"{c} {p:.1%}" for c, p in classes), highlight=False, markup=False)


@app.command("bundle")
def bundle_cmd(
    fmt: Annotated[Optional[list[str]], typer.Option("--format", "-f", help="Artifact to pack (repeatable; "
                                                     "default bundle.formats).")] = None,
    images: Annotated[Optional[int], typer.Option(min=0, help="Test images in eval.npz (0 = all).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where to write the tar.gz.")] = None,
    check_arm: Annotated[bool, typer.Option("--check-arm", help="Then run it on an emulated arm64 Debian 12 "
                                            "(root, qemu) and compare each image with the host.")] = False,
    runtime: Annotated[Optional[str], typer.Option(help="TFLite runtime the board installs: ai-edge-litert or "
                                                   "tflite-runtime (default bundle.runtime).")] = None,
):
    """Write a tar.gz for a Raspberry Pi or Linux board: models, runner, eval set, requirements, README."""
    from deploy import bundle as bundle_mod

    if runtime is not None:  # checked like the config key it overrides (a typo names the closest runtime)
        STATE.overrides = [*STATE.overrides, f"bundle.runtime={runtime}"]
    cfg, run = _setup()
    if not run.root.is_dir():
        raise UserError(f"run folder {run.root} does not exist; run 'compress all' first or give --run-dir")
    with run.locked():  # a running 'compress all' may be replacing the models
        states = runner_mod.Runner(cfg, run, console).states(run.manifest())
        path = bundle_mod.build(run, cfg, list(fmt or cfg.bundle.formats),
                                cfg.bundle.images if images is None else images, out, skip_missing=not fmt,
                                states=states)
    console.print(f"wrote {path}", highlight=False, markup=False)
    if check_arm:
        from deploy import arm_check

        result = path.parent / "arm64-emulated.json"
        _, rows, times = arm_check.check(path, result, log=lambda m: console.print(m, highlight=False, markup=False))
        console.print(arm_check.summary(rows, times) + f"wrote {result}; merge it: compress report --add {result}",
                      highlight=False, markup=False)
        bad = arm_check.problems(rows)
        for line in bad:
            console.print(f"FAIL {line}", highlight=False, markup=False)
        if bad:
            raise typer.Exit(1)


@app.command("bench-android")
def bench_android(
    artifacts: Annotated[Optional[list[str]], typer.Argument(help="tflite_* formats (default: all written).")] = None,
    binary: Annotated[Optional[str], typer.Option(help="benchmark_model path on the phone.")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Threads of the all-cores run.")] = None,
    delegate: Annotated[Optional[str], typer.Option(help="xnnpack | gpu | nnapi | none.")] = None,
    serial: Annotated[Optional[str], typer.Option(help="adb device serial.")] = None,
):
    """Time .tflite models on an Android phone with TFLite's benchmark_model over adb; merge into the report."""
    import dataclasses

    from pipeline.report import android

    cfg, run = _setup()
    given = {"binary": binary, "threads": threads, "delegate": delegate, "serial": serial}
    acfg = dataclasses.replace(cfg.android, **{k: v for k, v in given.items() if v is not None})
    with run.locked():
        android.bench(run, cfg, acfg, list(artifacts or []))
    _print_report()


def _stage_command(name: str):
    def command(force: ForceOpt = None):
        _run(name, None, force)
    command.__doc__ = f"Run the pipeline up to and including '{name}' (earlier stages only if needed)."
    return command


for _name in runner_mod.available():
    app.command(_name)(_stage_command(_name))


def _on_sigterm(signum, frame):
    raise Terminated()


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    app()


if __name__ == "__main__":
    main()
