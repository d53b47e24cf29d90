"""TFLite side of the pipeline: the conversion runs litert-torch in a subprocess (pipeline/export/litert_convert.py
says why); running models and reading metadata use ai_edge_litert only."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.export.litert_convert import METADATA_NAME

CONVERTER = [sys.executable, "-m", "pipeline.export.litert_convert"]  # a list, so tests can substitute a crashing one


def _require(module: str, pin: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"the TFLite route needs {pin}, which is not installed; run "
                        f"'.venv/bin/pip install {pin}' or drop the TFLite precisions (quantize.tflite=[])")


def plan(precisions: list[str], cores: int) -> list[tuple[list[str], int]]:
    """How to spread ``precisions`` over converter processes that run side by side: (precisions, threads) each.

    One conversion is mostly one busy core (litert-torch's lowering is Python and single-threaded MLIR), so on
    two cores or more the precisions go to separate processes, at most one per core: int8 first and alone (its
    calibration makes it the longest), the others shared out in turn. Each process gets an equal share of
    the cores as its torch threads, at least one: two processes with two OpenMP threads each on two cores
    spin against each other, and the stage was 1.26x slower than with one process doing all three
    (benchmarks/results/quantize_speed.md). Each process peaks at about 1.6 GB.
    """
    if cores < 2 or len(precisions) < 2:
        return [(list(precisions), max(1, cores))] if precisions else []
    n = min(cores, len(precisions))
    ordered = sorted(precisions, key=lambda p: not p.startswith("int8"))  # int8 first (a stable sort)
    groups = [ordered[:1]] + [ordered[1 + i::n - 1] for i in range(n - 1)]
    return [(g, max(1, cores // len(groups))) for g in groups]


def convert(checkpoint: Path, outputs: dict, metadata: dict, calibration: np.ndarray | None,
            timeout: float = 1200, qat_state: Path | None = None, threads: int | None = None,
            scratch: Path | None = None) -> dict:
    """Convert the compress checkpoint ``checkpoint`` to each precision in ``outputs`` ({precision: path}) in
    a subprocess. ``calibration``: normalised NCHW float images for int8; ``qat_state``: the fine-tuned QAT
    graph's state_dict for int8_qat (pipeline/export/qat.py); ``threads``: the subprocess's torch threads
    (None: torch's default, every core); ``scratch``: where the job's temporary files go (None: the system's).

    Returns {precision: {"status": ..., "reason" or the input/output quantization params}}.
    """
    return convert_many([(checkpoint, outputs, metadata, calibration)], timeout, qat_state, threads, scratch)[0]


def convert_many(jobs: list[tuple], timeout: float = 1200, qat_state: Path | None = None,
                 threads: int | None = None, scratch: Path | None = None) -> list[dict]:
    """Several conversions in one subprocess (litert-torch starts once), ``timeout`` seconds per job; a crash
    of that process becomes a failed entry for every precision of every job."""
    _require("litert_torch", "litert-torch==0.10.0")
    _require("ai_edge_litert", "ai-edge-litert==2.3.0")
    with tempfile.TemporaryDirectory(prefix="tflite-job-", dir=scratch) as tmp:
        spec = {"result": str(Path(tmp) / "result.json"), "jobs": []}
        for i, (checkpoint, outputs, metadata, calibration) in enumerate(jobs):
            # absolute: the converter process runs from the repository root, not from the user's folder
            job = {"checkpoint": str(Path(checkpoint).resolve()),
                   "outputs": {k: str(Path(v).resolve()) for k, v in outputs.items()},
                   "metadata": metadata, "calibration": None,
                   "qat_state": str(Path(qat_state).resolve()) if qat_state else None}
            if calibration is not None:
                job["calibration"] = str(Path(tmp) / f"calibration{i}.npy")
                np.save(job["calibration"], calibration)
            spec["jobs"].append(job)
        (Path(tmp) / "jobs.json").write_text(json.dumps(spec))
        failed = _run_subprocess(Path(tmp) / "jobs.json", timeout * len(jobs), threads)
        if failed is None and Path(spec["result"]).exists():
            return json.loads(Path(spec["result"]).read_text())
        return [{p: {"status": "failed", "reason": failed or "no result"} for p in outputs}
                for _, outputs, _, _ in jobs]


_RUNNING: set = set()  # converter processes now running, for stop()


def _run_subprocess(jobs_file: Path, timeout: float, threads: int | None = None) -> str | None:
    """Run pipeline.export.litert_convert on ``jobs_file``; None on success, else why it failed."""
    import os

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(CONVERTER + [str(jobs_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=Path(__file__).resolve().parents[2])
    _RUNNING.add(proc)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"TFLite conversion timed out after {timeout:.0f} s"
    finally:
        if proc.poll() is None:  # timed out, or an exception while waiting (Ctrl-C): leave no converter behind
            proc.kill()
            proc.wait()
        _RUNNING.discard(proc)
    if proc.returncode != 0:
        tail = (stderr.strip().splitlines() or ["no output"])[-1][:200]
        return f"TFLite converter process exited with {proc.returncode}: {tail}"
    return None


def stop() -> None:
    """Kill every converter process still running (a stage that fails or is interrupted while conversions run
    on other threads does not wait for them, nor leave them writing files after it has ended)."""
    for proc in list(_RUNNING):
        proc.kill()


def interpreter(path: Path, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter

    try:
        return Interpreter(model_path=str(path), num_threads=threads)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"{path} is not a valid TFLite model ({str(exc)[:100]}); delete it and rerun "
                        "'compress quantize --force quantize'") from exc


def logits(path: Path, x_nchw, batch: int = 500, threads: int = 2) -> np.ndarray:
    """Run normalised float NCHW images through a TFLite model (NHWC input); float32 logits.

    ``x_nchw`` is an array or anything sliced into arrays batch by batch (artifacts.Normalized).
    int8 models get their input quantized and their output dequantized with the file's own parameters.
    A graph with a fixed batch (litert-torch writes batch 1; ShuffleNet's channel-shuffle reshapes cannot
    take another) runs image by image.
    """
    interp = interpreter(path, threads)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results, current, one_by_one = [], None, False
    for i in range(0, len(x_nchw), batch):
        xb = np.ascontiguousarray(x_nchw[i:i + batch].transpose(0, 2, 3, 1))
        if not one_by_one and current != len(xb):
            one_by_one, current = not _resize(interp, inp, list(xb.shape)), len(xb)
        if one_by_one:
            results.append(logits_one_by_one(interp, xb, inp, out))
            continue
        interp.set_tensor(inp["index"], _to_input(xb, inp))
        interp.invoke()
        results.append(_from_output(interp.get_tensor(out["index"]), out))
    return np.concatenate(results)


def _resize(interp, inp: dict, shape: list) -> bool:
    """Give the input ``shape``; False, with batch 1 set again, where the graph refuses it."""
    try:
        interp.resize_tensor_input(inp["index"], shape)
        interp.allocate_tensors()
        return True
    except (ValueError, RuntimeError):
        interp.resize_tensor_input(inp["index"], [1, *shape[1:]])
        interp.allocate_tensors()
        return False


def logits_one_by_one(interp, x_nhwc: np.ndarray, inp: dict, out: dict) -> np.ndarray:
    rows = []
    for image in x_nhwc:
        interp.set_tensor(inp["index"], _to_input(image[None], inp))
        interp.invoke()
        rows.append(_from_output(interp.get_tensor(out["index"]), out))
    return np.concatenate(rows)


def _to_input(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def _from_output(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y.copy()
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale


def metadata(path: Path) -> dict:
    """The JSON metadata a TFLite file carries (read with the flatbuffer schema ai_edge_litert ships)."""
    from ai_edge_litert import schema_py_generated as schema

    buf = Path(path).read_bytes()
    try:
        model = schema.Model.GetRootAs(buf, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == METADATA_NAME.encode():
                return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    except Exception as exc:  # a damaged flatbuffer raises struct/index errors
        detail = str(exc)[:100] or type(exc).__name__
        raise UserError(f"{path} is damaged or cut short (its TFLite flatbuffer cannot be read: {detail}); rerun "
                        "'compress all' to rebuild it") from exc
    return {}


def weight_types(path: Path) -> dict:
    """dtype name -> count over the constant tensors (weights/biases) of a TFLite model."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    counts: dict = {}
    graph = model.Subgraphs(0)
    for t in range(graph.TensorsLength()):
        tensor = graph.Tensors(t)
        if model.Buffers(tensor.Buffer()).DataLength() > 0:
            key = names[tensor.Type()].lower()
            counts[key] = counts.get(key, 0) + 1
    return counts
