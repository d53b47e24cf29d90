"""Export + simplify + quantize a student, then time every artifact against its fp32 baseline.

    .venv/bin/python benchmarks/quantize_latency.py [--run-dir runs/default] [--student PATH] [--out FILE]

The student is <run-dir>/distill/student.pt unless --student names another checkpoint. The three
stages run in a scratch run directory (<run-dir>-quantbench, the real run is not touched) with the
run's resolved config.yaml (or configs/default.yaml), and are timed. Then: batch-1 single-thread
latency (median of --runs calls after warm-up) of each ONNX artifact (onnxruntime) against ONNX fp32
and of each TFLite artifact (ai_edge_litert, XNNPACK) against TFLite fp32, the test accuracy each
artifact kept (whole test set, from the quantize stage's gate) and ONNX fp32's top-1 agreement with
PyTorch on the whole test set. Prints one markdown table (and writes it to --out).
"""
from __future__ import annotations

import argparse
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STAGES = ("export", "simplify", "quantize")
TARGETS = {"onnx_int8_x86": 0.5, "onnx_int8_arm": None, "onnx_int8_dynamic": None, "tflite_int8": 0.6}


def prepare(run_dir: Path, student: Path | None):
    """Scratch run directory holding the student and the config; returns (cfg, RunDir)."""
    from pipeline import config as config_mod
    from pipeline.run.rundir import RunDir

    src = student or run_dir / "distill" / "student.pt"
    if not src.is_file():
        sys.exit(f"no student checkpoint at {src}; run 'compress distill' or pass --student PATH")
    scratch = RunDir(run_dir.with_name(run_dir.name + "-quantbench"))
    shutil.rmtree(scratch.root, ignore_errors=True)
    scratch.create()
    scratch.stage_dir("distill")
    shutil.copy(src, scratch.root / "distill" / "student.pt")
    resolved = run_dir / "config.yaml"
    cfg = config_mod.load(str(resolved) if resolved.is_file() else "default")
    return cfg, scratch


def run_stages(cfg, run) -> dict:
    from rich.console import Console

    from pipeline.run.runner import Runner

    runner, seconds = Runner(cfg, run, Console(quiet=True)), {}
    for name in STAGES:
        started = time.perf_counter()
        runner._run_stage(name, run.manifest())  # the runner's own per-stage path: fingerprint, manifest
        seconds[name] = time.perf_counter() - started
    return seconds


def median_ms(call, runs: int, warmup: int = 30, rounds: int = 5) -> float:
    """Fastest of ``rounds`` medians of ``runs / rounds`` calls each: the median drops outliers within
    a round, the minimum drops rounds another process disturbed (the 2-core machine is shared)."""
    for _ in range(warmup):
        call()
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(max(1, runs // rounds)):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        medians.append(np.median(times))
    return float(min(medians) * 1000)


def onnx_latency(path: Path, x: np.ndarray, runs: int) -> float:
    from pipeline.export import onnx_tools

    sess = onnx_tools.session(path, threads=1)
    return median_ms(lambda: sess.run(None, {"input": x}), runs)


def tflite_latency(path: Path, x: np.ndarray, runs: int) -> float:
    from pipeline.export import tflite_tools

    interp = tflite_tools.interpreter(path, threads=1)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], [1, *x.shape[2:], x.shape[1]])
    interp.allocate_tensors()
    xq = tflite_tools._to_input(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), inp)

    def call():
        interp.set_tensor(inp["index"], xq)
        interp.invoke()
    return median_ms(call, runs)


def torch_agreement(cfg, run) -> dict:
    """ONNX fp32 against PyTorch on the whole test set."""
    from pipeline import data, models
    from pipeline.export import artifacts, onnx_tools
    from pipeline.train.evaluate import predict

    model, _ = models.load_model(run.root / "distill" / "student.pt")
    ds = data.load(cfg.data, cfg.seed)
    ref = predict(model, ds.test_x, ds).numpy()
    out = onnx_tools.logits(run.root / "export" / "onnx_fp32.onnx", artifacts.normalized(ds, ds.test_x))
    return {**onnx_tools.parity(ref, out), "images": len(ref)}, artifacts.normalized(ds, ds.test_x[:1])


def table(cfg, run, seconds: dict, agree: dict, x1: np.ndarray, runs: int) -> str:
    from pipeline.export import formats

    arts = {**run.manifest()["stages"]["export"]["metrics"]["artifacts"],
            **run.manifest()["stages"]["quantize"]["metrics"]["artifacts"]}
    rows, base = [], {}
    fp32_top1 = run.manifest()["stages"]["quantize"]["metrics"].get("fp32_test_top1")
    for name in ("onnx_fp32", "onnx_int8_x86", "onnx_int8_arm", "onnx_int8_dynamic", "tflite_fp32", "tflite_fp16",
                 "tflite_int8"):
        fmt, entry = formats.get(name), arts.get(name, {"status": "missing"})
        if entry.get("status") != "ok":
            rows.append(f"| {name} | {fmt.runtime} | {fmt.precision} | - | - | - | - | - | "
                        f"failed: {entry.get('reason')} |")
            continue
        path = run.root / fmt.stage / fmt.filename()
        ms = (onnx_latency if fmt.runtime == "onnxruntime" else tflite_latency)(path, x1, runs)
        base.setdefault(fmt.runtime, ms)
        ratio = ms / base[fmt.runtime]
        target = TARGETS.get(name)
        drop = entry.get("drop_points")
        verdict = [] if target is None else [f"ratio {'<=' if ratio <= target else '>'} {target}"]
        if drop is not None and fmt.precision.startswith("int8"):
            verdict.append(f"drop {'<=' if drop <= 0.5 else '>'} 0.5")
        top1 = entry.get("test_top1", fp32_top1 if name == "onnx_fp32" else None)
        rows.append(f"| {name} | {fmt.runtime} | {fmt.precision} | {path.stat().st_size / 1024:.1f} | {ms:.3f} | "
                    f"{ratio:.2f}x | {top1 if top1 is not None else '-'} | {drop if drop is not None else '-'} | "
                    f"{', '.join(verdict) or 'ok'} |")
    total = sum(seconds.values())
    head = ["| artifact | runtime | precision | KiB | batch-1 ms (1 thread) | vs fp32 (same runtime) | test top-1 | "
            "drop (points) | check |", "|---|---|---|---|---|---|---|---|---|"]
    notes = [f"- student: {arts['onnx_fp32'].get('nodes')} ONNX nodes; fp32 test top-1 {fp32_top1}",
             f"- ONNX fp32 vs PyTorch on {agree['images']} test images: top-1 agreement {agree['top1_agreement']:.2%}, "
             f"max abs logit diff {agree['max_abs_diff']:.2e}",
             f"- export {seconds['export']:.1f} s + simplify {seconds['simplify']:.1f} s + quantize "
             f"{seconds['quantize']:.1f} s = {total:.1f} s ({'<=' if total <= 120 else '>'} 120 s)",
             f"- machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}; "
             f"latency = fastest of 5 medians of {runs // 5} calls each, after 30 warm-up calls"]
    return "\n".join(head + rows) + "\n\n" + "\n".join(notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/default"))
    parser.add_argument("--student", type=Path, default=None, help="a checkpoint instead of distill/student.pt")
    parser.add_argument("--runs", type=int, default=1000, help="timed calls per artifact")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    cfg, run = prepare(args.run_dir, args.student)
    seconds = run_stages(cfg, run)  # litert-torch only ever runs in the converter's subprocess
    agree, x1 = torch_agreement(cfg, run)
    text = table(cfg, run, seconds, agree, x1, args.runs)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
