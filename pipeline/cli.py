"""The ``compress`` command line. No logic lives here: it parses, then calls the runner or a stage."""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from pipeline import runner as runner_mod
from pipeline.errors import UserError

console = Console()
err_console = Console(stderr=True)


# Global options and whether they take a value; accepted before or after the sub-command.
GLOBAL_OPTIONS = {"-c": True, "--config": True, "-s": True, "--set": True, "-r": True, "--run-dir": True,
                  "--cache-dir": True, "--debug": False}
RESUME = "finished stages and the last epoch checkpoint are kept; rerun the same command to resume"


class Terminated(BaseException):
    """SIGTERM (a job scheduler's stop), handled like Ctrl-C."""


def _hoist_global_options(args: list[str]) -> list[str]:
    """Move global options that follow the sub-command in front of it (`compress all -c smoke`)."""
    i = 0
    while i < len(args) and args[i].startswith("-"):  # find the sub-command
        i += 2 if GLOBAL_OPTIONS.get(args[i]) else 1
    head, tail, rest = args[:i + 1], [], []
    j = i + 1
    while j < len(args):
        arg, name = args[j], args[j].split("=", 1)[0]
        if arg == "--":
            rest.extend(args[j:])
            break
        if name in GLOBAL_OPTIONS:
            takes_value = GLOBAL_OPTIONS[name] and "=" not in arg
            if takes_value and j + 1 == len(args):
                raise ValueError(f"Option '{arg}' requires an argument.")
            tail.extend(args[j:j + 1 + takes_value])
            j += 1 + takes_value
            continue
        rest.append(arg)
        j += 1
    return head[:-1] + tail + head[-1:] + rest if head else args


def _disk_full(exc: BaseException) -> str | None:
    """The one-line message for ENOSPC / EDQUOT anywhere under a command, else None."""
    if not (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
        return None
    from pipeline.store import free_space

    where = Path(exc.filename).parent if exc.filename else Path.cwd()
    return (f"[red]error:[/red] no space left for {where} ({free_space(where)} free); free some space and rerun "
            "the same command to resume (finished stages are kept)")


class _Group(TyperGroup):
    """Turns a UserError into one line on stderr and exit code 2, anything unexpected into one line and exit
    code 1 (tracebacks only with --debug), and Ctrl-C / SIGTERM into a note that the run can be resumed.
    Click's own usage errors (unknown command or option) pass through: usage line, message, exit 2."""

    def parse_args(self, ctx, args):
        try:
            args = _hoist_global_options(list(args))
        except ValueError as exc:
            ctx.fail(str(exc))
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):  # Click's usage errors: usage line, exit 2
            raise
        except UserError as exc:
            _fail(f"[red]error:[/red] {exc}", 2)
        except KeyboardInterrupt:
            _fail(f"interrupted: {RESUME}", 130)
        except Terminated:
            _fail(f"terminated (SIGTERM): {RESUME}", 143)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if message := _disk_full(exc):
                _fail(message, 2)
            _fail(f"[red]internal error:[/red] {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)


def _fail(message: str, code: int):
    if STATE.debug:
        traceback.print_exc()
    err_console.print(message, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, distill, quantize and benchmark a small image classifier.")


class State:
    config: Optional[str] = None
    overrides: list[str] = []
    run_dir: Optional[Path] = None
    cache_dir: Optional[Path] = None
    debug: bool = False


STATE = State()


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
    from pipeline.store import RunDir

    cfg = config_mod.load(STATE.config or "default", STATE.overrides)
    name = Path(STATE.config).stem if STATE.config else "default"
    run = RunDir(STATE.run_dir or Path("runs") / name, STATE.cache_dir)
    return cfg, run


def _run(to: Optional[str], start: Optional[str], force: Optional[str]) -> None:
    cfg, run = _setup()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from pipeline.engine import init_distributed

        init_distributed()
    main = runner_mod.is_main_process()  # under torchrun, ranks > 0 train alongside but write nothing
    with run.locked() if main else contextlib.nullcontext():
        runner = runner_mod.Runner(cfg, run, console if main else Console(quiet=True), STATE.debug)
        runner.run_all(runner.select(to=to, start=start), force=force)


ForceOpt = Annotated[Optional[str], typer.Option("--force", help="Rerun this stage and every stage after it.")]


@app.command("all")
def all_(
    force: ForceOpt = None,
    start: Annotated[Optional[str], typer.Option("--from", help="First stage to run (earlier ones must be "
                                                 "done).")] = None,
    to: Annotated[Optional[str], typer.Option("--to", help="Last stage to run.")] = None,
):
    """Run every stage in order, skipping those whose inputs and config have not changed."""
    _run(to, start, force)
    _print_report()


def _print_report() -> None:
    """End of 'compress all': the benchmark table, when the run has one."""
    cfg, run = _setup()
    if runner_mod.is_main_process() and (run.root / "benchmark" / "results.json").is_file():
        from pipeline import report as report_mod

        console.print(report_mod.rich_table(run.root / "benchmark", cfg.benchmark.max_drop))
        console.print(f"report: {run.root / 'benchmark' / 'report.md'}", highlight=False)


@app.command()
def status():
    """Each stage: done, stale or missing; when it finished, how long it took, variants in the run-cache."""
    from rich.table import Table

    cfg, run = _setup()
    table = Table(title=f"run {run.root}")
    for col in ("stage", "state", "finished", "took", "cached"):
        table.add_column(col)
    colours = {"done": "green", "stale": "yellow", "missing": "red"}
    for name, state, finished, took, cached in runner_mod.Runner(cfg, run, console).status_rows():
        table.add_row(name, f"[{colours[state]}]{state}[/]", finished, took, cached)
    console.print(table)
    console.print(f"run-cache: {run.cache.root} ({run.cache.size() / 2**20:.1f} MB; 'compress gc' frees it)",
                  highlight=False)
    if cfg.data.dataset == "imagefolder":
        from pipeline import imagefolder

        cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else imagefolder.default_cache_dir()
        entries, size = imagefolder.cache_usage(cache)
        console.print(f"decode cache: {cache} ({entries} decoded folder(s), {size / 2**20:.1f} MB; delete an entry "
                      "or the folder to free it)", highlight=False)


@app.command()
def gc(keep: Annotated[int, typer.Option(min=0, help="Cached variants to keep per stage, newest first (the one "
                                         "the run folder uses is always kept).")] = 0):
    """Free the run-cache: keep only what the run folder uses (and the --keep newest variants of each stage)."""
    from pipeline.store import RunDir

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

    cfg, run = _setup()
    with run.locked():
        compare_mod.run(cfg, run, console)


@app.command("report")
def report_cmd(add: Annotated[Optional[list[Path]], typer.Option("--add", help="results.json from a device "
                                                                 "(repeatable).")] = None):
    """Merge device results into report.md and pareto.png, and print the benchmark table."""
    from pipeline import report as report_mod

    cfg, run = _setup()
    with run.locked():
        for path in report_mod.add(run, list(add or []), cfg.benchmark.max_drop):
            console.print(f"wrote {path}", highlight=False)
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
    name, results = predict_mod.predict(run.root, images, artifact, top, cfg.benchmark.max_drop)
    console.print(f"[bold]{name}[/bold] ({run.root})", highlight=False)
    for image, classes in results:
        console.print(f"{image}: " + ", ".join(f"{c} {p:.1%}" for c, p in classes), highlight=False)


@app.command("bundle")
def bundle_cmd(
    fmt: Annotated[Optional[list[str]], typer.Option("--format", "-f", help="Artifact to pack (repeatable; "
                                                     "default bundle.formats).")] = None,
    images: Annotated[Optional[int], typer.Option(min=0, help="Test images in eval.npz (0 = all).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where to write the tar.gz.")] = None,
    check_arm: Annotated[bool, typer.Option("--check-arm", help="Then run it on an emulated arm64 Debian 12 "
                                            "(root, qemu) and compare each image with the host.")] = False,
):
    """Write a tar.gz for a Raspberry Pi or Linux board: models, runner, eval set, requirements, README."""
    from deploy import bundle as bundle_mod

    cfg, run = _setup()
    if not run.root.is_dir():
        raise UserError(f"run folder {run.root} does not exist; run 'compress all' first or give --run-dir")
    with run.locked():  # a running 'compress all' may be replacing the models
        path = bundle_mod.build(run, cfg, list(fmt or cfg.bundle.formats),
                                cfg.bundle.images if images is None else images, out, skip_missing=not fmt)
    console.print(f"wrote {path}", highlight=False)
    if check_arm:
        from deploy import arm_check

        result = path.parent / "arm64-emulated.json"
        _, rows, times = arm_check.check(path, result, log=lambda m: console.print(m, highlight=False))
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

    from deploy import android

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
