"""simplify: onnxsim (falling back to onnxslim when it fails or is missing), node counts before and
after, the same parity check against PyTorch as export, metadata carried over."""
from __future__ import annotations

from pathlib import Path

from rich.markup import escape

NAME = "simplify"
SECTIONS = ("seed", "data", "export", "simplify")
UPSTREAM = ("distill", "export")
TOOLS = ("auto", "onnxsim", "onnxslim")


def _onnxsim(proto):
    import onnxsim

    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        raise RuntimeError("onnxsim could not validate its result")
    return simplified


def _onnxslim(proto):
    import onnxslim

    return onnxslim.slim(proto)


def simplify(proto, tool: str, console) -> tuple[object, str]:
    """Simplified model and the tool that made it; each failure is logged and the next tool tried."""
    from pipeline.errors import UserError

    if tool not in TOOLS:
        raise UserError(f"unknown simplify.tool '{tool}'; use one of {', '.join(TOOLS)}")
    tried = []
    for name, fn in (("onnxsim", _onnxsim), ("onnxslim", _onnxslim)):
        if tool not in ("auto", name):
            continue
        try:
            return fn(proto), name
        except ImportError:
            tried.append(f"{name} is not installed (pip install {name}=={_PIN[name]})")
        except Exception as exc:  # a simplifier crash must not stop the pipeline if another one works
            tried.append(f"{name} failed ({type(exc).__name__}: {str(exc)[:80]})")
        console.print(f"[yellow]simplify:[/yellow] {escape(tried[-1])}", highlight=False)
    raise UserError("; ".join(tried))


_PIN = {"onnxsim": "0.8.1", "onnxslim": "0.1.98"}


def run(ctx) -> list[Path]:
    from pipeline.errors import UserError
    from pipeline.export import artifacts, onnx_tools
    from stages.export import reference

    source = artifacts.upstream(ctx, "onnx_fp32")
    before = onnx_tools.load(source)
    meta = onnx_tools.metadata(before)
    *_, x, ref = reference(ctx)
    out = artifacts.path_of(ctx, "onnx_simplified")
    with artifacts.conversion(ctx, "onnx_simplified") as entry:
        proto, tool = simplify(before, ctx.cfg.simplify.tool, ctx.console)
        onnx_tools.set_metadata(proto, {**meta, "format": "onnx_simplified"})
        tmp = out.with_name(".simplify.tmp.onnx")
        try:
            onnx_tools.save(proto, tmp)
            onnx_tools.load(tmp)
            onnx_tools.verify(tmp, x, ref, ctx.cfg.export, entry)
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
        entry.update(tool=tool, nodes_before=onnx_tools.node_count(before), nodes_after=onnx_tools.node_count(proto),
                     ops=onnx_tools.op_counts(proto))
    if ctx.metrics["artifacts"]["onnx_simplified"]["status"] != "ok":
        raise UserError(ctx.metrics["artifacts"]["onnx_simplified"]["reason"])
    return [out]
