"""How every ``compress`` command ends: a UserError as one line and exit code 2, anything unexpected as one line
and exit code 1 (tracebacks with --debug), a full disk as one line naming the folder, Ctrl-C and SIGTERM as a note
that the run resumes; and the global options, which may also follow the sub-command."""
from __future__ import annotations

import errno
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from pipeline.errors import UserError

err_console = Console(stderr=True)


# Global options and whether they take a value; accepted before or after the sub-command.
GLOBAL_OPTIONS = {"-c": True, "--config": True, "-s": True, "--set": True, "-r": True, "--run-dir": True,
                  "--cache-dir": True, "--debug": False}


RESUME = "finished stages and the last epoch checkpoint are kept; rerun the same command to resume"


class Terminated(BaseException):
    """SIGTERM (a job scheduler's stop), handled like Ctrl-C."""


def hoist_global_options(args: list[str]) -> list[str]:
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


def disk_full(exc: BaseException) -> str | None:
    """The one-line message for ENOSPC / EDQUOT anywhere under a command, else None."""
    if not (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
        return None
    from pipeline.files import free_space

    where = Path(exc.filename).parent if exc.filename else Path.cwd()
    return (f"[red]error:[/red] no space left for {escape(str(where))} ({free_space(where)} free); free some space "
            "and rerun the same command to resume (finished stages are kept)")


class Group(TyperGroup):
    """Turns a UserError into one line on stderr and exit code 2, anything unexpected into one line and exit
    code 1 (tracebacks only with --debug), and Ctrl-C / SIGTERM into a note that the run can be resumed.
    Click's own usage errors (unknown command or option) pass through: usage line, message, exit 2."""

    def parse_args(self, ctx, args):
        try:
            args = hoist_global_options(list(args))
        except ValueError as exc:
            ctx.fail(str(exc))
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):  # Click's usage errors: usage line, exit 2
            raise
        except UserError as exc:
            fail(f"[red]error:[/red] {escape(str(exc))}", 2)  # a path or a library's text may hold [brackets]
        except KeyboardInterrupt:
            fail(f"interrupted: {RESUME}", 130)
        except Terminated:
            fail(f"terminated (SIGTERM): {RESUME}", 143)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if message := disk_full(exc):
                fail(message, 2)
            fail(f"[red]internal error:[/red] {type(exc).__name__}: {escape(str(exc))} (rerun with --debug for the "
                 "traceback)", 1)


def fail(message: str, code: int):
    if STATE.debug:
        traceback.print_exc()
    err_console.print(message, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class State:
    config: Optional[str] = None
    overrides: list[str] = []
    run_dir: Optional[Path] = None
    cache_dir: Optional[Path] = None
    debug: bool = False


STATE = State()
