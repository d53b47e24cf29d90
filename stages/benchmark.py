"""benchmark: accuracy, latency, throughput, size and memory of every artifact of the run on this machine,
then results.json, report.md and pareto.png.

Every model is measured by deploy/runner.py in a child process of its own (the same code the device bundle
ships); this module only adds the PyTorch eager adapter and lists what to measure.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import UserError

NAME = "benchmark"
SECTIONS = ("seed", "data", "distill", "benchmark")  # distill: the method named in the report
UPSTREAM = ("teacher", "distill", "export", "simplify", "quantize")
REPO = Path(__file__).resolve().parent.parent


class TorchModel:
    """PyTorch eager fp32, with the same interface as deploy.runner's ONNX and TFLite adapters."""

    runtime = "torch"
    layout = "NCHW"

    def __init__(self, path: str, threads: int, image_shape):
        import torch

        from pipeline.models import load_model

        torch.set_num_threads(threads)
        self.torch = torch
        self.model, ckpt = load_model(Path(path))
        self.model.eval()
        self.meta = {"mean": list(ckpt["meta"]["mean"]), "std": list(ckpt["meta"]["std"])}

    def resize(self, batch: int) -> bool:
        return True

    def prepare(self, x: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def __call__(self, x):
        with self.torch.inference_mode():
            return self.model(x)

    def logits(self, out) -> np.ndarray:
        return out.numpy()


def jobs(ctx, data_path: Path, ds, val_path: Path | None = None) -> list[dict]:
    """One measurement job per artifact that exists; failed rows for those that do not. With ``val_path`` each
    is also evaluated on the validation split, which the recommendation uses."""
    from pipeline.export import inventory
    from pipeline.export.inventory import settings
    out = []
    for item in inventory.artifacts(ctx.run.root, ctx.run.manifest()):
        if item.get("status") == "failed":
            out.append(item)
            continue
        adapter = "stages.benchmark:TorchModel" if item["runtime"] == "torch" else item["runtime"]
        out.append({**item, "adapter": adapter, "data": str(data_path), "pythonpath": str(REPO),
                    **({"val_data": str(val_path)} if val_path else {}),
                    "settings": settings(ctx.cfg.benchmark), "meta": {"mean": list(ds.mean), "std": list(ds.std)}})
    return out


def run(ctx) -> list[Path]:
    import tempfile

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from deploy import runner
    from pipeline import data
    from pipeline.export import inventory
    from pipeline.export.inventory import settings, write_eval_set
    from pipeline.report import results, table, write
    cfg = ctx.cfg
    ds = data.load(cfg.data, cfg.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="compress-eval-", dir=ctx.run.scratch()) as tmp:
        val = write_eval_set(Path(tmp) / "val.npz", ds, 0, "val") if len(ds.val_y) else None
        todo = jobs(ctx, write_eval_set(Path(tmp) / "eval.npz", ds, cfg.benchmark.eval_images), ds, val)
        # one artifact can time for minutes (min_runs, min_seconds): the spinner and the clock show it is alive
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=ctx.console, transient=True) as progress:
            task = progress.add_task("benchmark", total=len(todo))
            for job in todo:
                progress.update(task, description=f"benchmark {job['artifact']}")
                row = (job if job.get("status") == "failed"
                       else runner.measure_isolated(job, cfg.benchmark.timeout_s, Path(tmp)))
                rows.append({k: v for k, v in row.items() if k not in ("adapter", "data", "pythonpath", "settings",
                                                                        "meta", "path", "val_data")})
                ctx.console.print(runner.row_line(rows[-1]), highlight=False, markup=False)  # reasons: any text
                progress.advance(task)
    check_measured(rows, cfg.benchmark.timeout_s)
    manifest = ctx.run.manifest()
    attach_records(rows, manifest["stages"])
    doc = runner.results_doc({**inventory.run_info(ctx.run.root, manifest), "method": cfg.distill.method},
                             runner.machine_info(), settings(cfg.benchmark), rows)
    outputs = write.write_all(ctx.dir, doc, cfg.benchmark.max_drop)
    best = table.recommended(table.table(doc, results.device_docs(ctx.dir)), cfg.benchmark.max_drop)
    ctx.metrics.update(run_id=doc["run"]["run_id"], recommended=best.get(doc["machine"]["device"]),
                       rows={r["artifact"]: _summary(r) for r in rows})
    return outputs


def attach_records(rows: list[dict], stages: dict) -> None:
    """Give each row what its producing stage recorded and the report reads before it draws a conclusion: the
    BatchNorm check of a PyTorch model (pipeline/train/batchnorm.py) and the int8 audit of a quantized file."""
    distill = stages.get("distill", {}).get("metrics", {}).get("bn_check", {})
    bn = {"teacher_fp32": stages.get("teacher", {}).get("metrics", {}).get("bn_check"),
          "student_alone_fp32": distill.get("baseline"), "torch_fp32": distill.get("student")}
    made = stages.get("quantize", {}).get("metrics", {}).get("artifacts", {})
    for row in rows:
        if bn.get(row["artifact"]):
            row["bn_check"] = bn[row["artifact"]]
        if made.get(row["artifact"], {}).get("audit"):
            row["audit"] = made[row["artifact"]]["audit"]


def check_measured(rows: list[dict], timeout_s: float) -> None:
    """Stop, with nothing recorded as done, when no artifact could be measured: a table of failures is no result."""
    if any(r["status"] == "ok" for r in rows):
        return
    if not rows:
        raise UserError("benchmark: the run has no model to measure; run 'compress all' first")
    if all(r.get("timed_out") for r in rows):
        raise UserError(f"benchmark: every artifact timed out after {timeout_s:.0f} s; raise benchmark.timeout_s or "
                        "lower benchmark.min_runs and benchmark.min_seconds, then rerun 'compress benchmark'")
    reasons = "; ".join(f"{r['artifact']}: {r.get('reason') or 'no reason recorded'}" for r in rows[:3])
    raise UserError(f"benchmark: no artifact could be measured ({reasons}{'; ...' if len(rows) > 3 else ''}); "
                    "fix the first reason and rerun 'compress benchmark'")


def _summary(row: dict) -> dict:
    if row["status"] != "ok":
        return {"status": row["status"], "reason": row.get("reason", "")}
    return {"status": "ok", "top1": row["top1"], "val_top1": row.get("val_top1"),
            "p50_ms": row["latency"]["one_thread"]["p50_ms"],
            "bytes": row.get("bytes")}
