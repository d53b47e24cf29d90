"""Measure a model's accuracy and latency with numpy and one runtime; never torch.

The benchmark stage and the device bundle both measure through this one file, so a Raspberry Pi measures
exactly as the host does. Each model is measured in a child process of its own (``--job``): peak resident
memory is then that runtime's alone, and a runtime that crashes on a model fails that row only.

On a device, inside an unpacked bundle::

    python3 runner.py                  # every model in bundle.json -> results.json
    python3 runner.py --threads 4 --out pi4.json --device pi4
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import numpy as np
except ImportError:  # on a board where the README's pip step was skipped: one line, not a traceback
    print("error: numpy is not installed; run: pip install -r requirements.txt", file=sys.stderr)
    sys.exit(2)

SCHEMA = "compress.results/1"
BUNDLE_SCHEMA = "compress.bundle/1"  # bundle.json, which deploy/bundle.py writes and this file reads
DEFAULTS = {"warmup_runs": 20, "min_runs": 200, "min_seconds": 1.0, "threads": 0, "throughput_batch": 64,
            "throughput_seconds": 1.0, "eval_batch": 256}


class RuntimeMissing(Exception):
    """The runtime a model needs is not installed; the message says what to install."""


class BadBundle(Exception):
    """A bundle.json of another format; the message says to rebuild the bundle."""


def tflite_interpreter():
    """(Interpreter class, package name): ai-edge-litert first, tflite-runtime where that is what is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter, "tflite-runtime"
    except ImportError:
        raise RuntimeMissing("no TFLite runtime installed: pip install ai-edge-litert "
                             "(or tflite-runtime)") from None


def _layout(shape, image_shape) -> str:
    """NCHW or NHWC, from the model's input shape against the images' (C, H, W)."""
    c, h, w = image_shape
    dims = tuple(int(d) if isinstance(d, (int, np.integer)) and d > 0 else -1 for d in shape[1:])
    if dims == (c, h, w):
        return "NCHW"
    if dims == (h, w, c):
        return "NHWC"
    shown = [int(d) if isinstance(d, (int, np.integer)) else d for d in shape]  # not np.int32(1)
    raise ValueError(f"model input {shown} fits neither N x {c} x {h} x {w} nor N x {h} x {w} x {c}")


class OnnxModel:
    """An onnxruntime CPU session with ``threads`` intra-op threads."""

    runtime = "onnxruntime"

    def __init__(self, path: str, threads: int, image_shape):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeMissing("onnxruntime is not installed: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inp = self.sess.get_inputs()[0]
        self.name, self.layout = inp.name, _layout(inp.shape, image_shape)
        self.meta = _decode(self.sess.get_modelmeta().custom_metadata_map)
        self.bind()

    def bind(self):
        self._run = self.sess.run  # bound once: attribute lookups per call are harness overhead

    def resize(self, batch: int) -> bool:
        return True  # exported with a dynamic batch axis

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1) if self.layout == "NHWC" else x)

    def __call__(self, x: np.ndarray):
        return self._run(None, {self.name: x})[0]

    def logits(self, out) -> np.ndarray:
        return np.asarray(out, np.float32)


class TfliteModel:
    """A TFLite interpreter (XNNPACK on CPU); int8 inputs/outputs are (de)quantised with the tensors' own
    scale and zero point."""

    runtime = "tflite"

    def __init__(self, path: str, threads: int, image_shape):
        interpreter, self.package = tflite_interpreter()
        self.it = interpreter(model_path=str(path), num_threads=threads)
        self.it.allocate_tensors()
        self.partitions = self._partitions()
        self._details()
        self.layout = _layout(self.inp["shape"], image_shape)
        self.meta = {}  # TFLite metadata needs the flatbuffer schema; the sidecar JSON carries it instead

    def _partitions(self) -> int | None:
        """XNNPACK partitions this runtime made of the file (one DELEGATE node each): 1 is a file that runs whole
        in XNNPACK, 0 one that runs on TFLite's builtin kernels only; None where the runtime cannot list ops."""
        try:
            return sum(op["op_name"] == "DELEGATE" for op in self.it._get_ops_details())
        except (AttributeError, KeyError, RuntimeError, ValueError):
            return None

    def _details(self):
        self.inp, self.out = self.it.get_input_details()[0], self.it.get_output_details()[0]
        self.batch = int(self.inp["shape"][0])
        self.bind()

    def bind(self):
        # bound once: attribute and dict lookups per call are harness overhead on a 20 us model
        self._set, self._invoke, self._get = self.it.set_tensor, self.it.invoke, self.it.get_tensor
        self._in, self._out = self.inp["index"], self.out["index"]

    def resize(self, batch: int) -> bool:
        """Set the batch size; False (and batch 1 again) where the graph has a fixed batch."""
        if batch == self.batch:
            return True
        shape = [batch, *map(int, self.inp["shape"][1:])]
        try:
            self.it.resize_tensor_input(self.inp["index"], shape, strict=False)
            self.it.allocate_tensors()
        except (ValueError, RuntimeError, TypeError):
            self.it.resize_tensor_input(self.inp["index"], [1, *shape[1:]])
            self.it.allocate_tensors()
            self._details()
            return False
        self._details()
        return self.batch == batch

    def prepare(self, x: np.ndarray) -> np.ndarray:
        x = x.transpose(0, 2, 3, 1) if self.layout == "NHWC" else x
        dtype = np.dtype(self.inp["dtype"])
        if dtype.kind in "iu":
            scale, zero = self.inp["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        return np.ascontiguousarray(x, dtype=dtype)

    def __call__(self, x: np.ndarray):
        self._set(self._in, x)
        self._invoke()
        return self._get(self._out)

    def logits(self, out) -> np.ndarray:
        if np.dtype(self.out["dtype"]).kind in "iu":
            scale, zero = self.out["quantization"]
            return (out.astype(np.float32) - zero) * scale
        return np.asarray(out, np.float32)


def _decode(props: dict) -> dict:
    out = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def load_adapter(spec: str):
    """``module:Class`` -> the class; built-in names onnxruntime / tflite need no import path."""
    if spec in ("onnxruntime", "tflite"):
        return {"onnxruntime": OnnxModel, "tflite": TfliteModel}[spec]
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


# --- measuring ------------------------------------------------------------------------------------------

def normalize(x_uint8: np.ndarray, mean, std) -> np.ndarray:
    """(pixel / 255 - mean) / std per channel, float32 NCHW: exactly what training fed the model."""
    mean = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return ((x_uint8.astype(np.float32) / np.float32(255)) - mean) / std


def time_calls(fn, x, warmup: int, min_runs: int, min_seconds: float) -> list:
    """Seconds per call of ``fn(x)``: ``warmup`` untimed calls, then timed calls until at least ``min_runs``
    calls AND ``min_seconds`` have passed, whichever is longer."""
    for _ in range(warmup):
        fn(x)
    clock = time.perf_counter
    # one clock read per call: a call's time is the gap between consecutive stamps (the loop's own
    # bookkeeping, tens of ns, is inside it and counted honestly)
    stamps = [clock()]
    while len(stamps) <= min_runs or stamps[-1] - stamps[0] < min_seconds:
        fn(x)
        stamps.append(clock())
    return [b - a for a, b in zip(stamps, stamps[1:])]


def summarize(times) -> dict:
    ms = np.asarray(times) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": round(float(p50), 5), "p90_ms": round(float(p90), 5), "p99_ms": round(float(p99), 5),
            "mean_ms": round(float(ms.mean()), 5), "runs": len(ms)}


def evaluate(model, images, labels, mean, std, batch: int, predictions: bool = False) -> dict:
    """Top-1 (and top-5 above 10 classes) over every image; a partial last batch is padded. With
    ``predictions`` the row also carries each image's top-1 class, so two machines can be compared image by
    image rather than by a count that can hide swaps."""
    batch = batch if model.resize(batch) else 1
    hits1 = hits5 = 0
    preds = []
    for start in range(0, len(images), batch):
        chunk = normalize(images[start:start + batch], mean, std)
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), np.float32)])
        logits = model.logits(model(model.prepare(chunk)))[:n]
        y = labels[start:start + n]
        preds += logits.argmax(1).tolist()
        hits1 += int((logits.argmax(1) == y).sum())
        top5 = np.argsort(-logits, axis=1)[:, :5]
        hits5 += int((top5 == y[:, None]).any(1).sum())
    out = {"top1": hits1 / len(images), "images": int(len(images))}
    if logits.shape[1] > 10:
        out["top5"] = hits5 / len(images)
    if predictions:
        out["predictions"] = preds
    return out


def all_cores(threads: int) -> int:
    return threads if threads > 0 else (os.cpu_count() or 1)


def measure(job: dict) -> dict:
    """Accuracy, latency (batch 1, one thread and all cores), throughput and peak RSS of one model."""
    s = {**DEFAULTS, **job.get("settings", {})}
    data = np.load(job["data"])
    images, labels = data["images"], data["labels"].astype(np.int64)
    adapter, n_all = load_adapter(job["adapter"]), all_cores(s["threads"])
    model = adapter(job["path"], n_all, images.shape[1:])
    meta = {**job.get("meta", {}), **{k: v for k, v in model.meta.items() if k in ("mean", "std")}}
    row = {"normalization": "model" if "mean" in model.meta else "sidecar", "layout": model.layout,
           **({"tflite_package": model.package, "xnnpack_partitions": model.partitions}
              if hasattr(model, "partitions") else {}),
           **evaluate(model, images, labels, meta["mean"], meta["std"], s["eval_batch"],
                      bool(s.get("predictions")))}
    if job.get("val_data"):  # the validation split, which choices between artifacts are made on
        val = np.load(job["val_data"])
        row["val_top1"] = evaluate(model, val["images"], val["labels"].astype(np.int64), meta["mean"], meta["std"],
                                   s["eval_batch"])["top1"]
    if s.get("accuracy_only"):  # under an emulator time means nothing: accuracy and predictions only
        return row
    x = normalize(images[:s["throughput_batch"]], meta["mean"], meta["std"])
    if len(x) < s["throughput_batch"]:
        x = np.resize(x, (s["throughput_batch"], *x.shape[1:]))
    batch = s["throughput_batch"] if model.resize(s["throughput_batch"]) else 1
    t = time_calls(model, model.prepare(x[:batch]), 2, 3, s["throughput_seconds"])
    row["throughput"] = {"batch": batch, "threads": n_all, "images_per_s": round(batch * len(t) / sum(t), 2)}
    model.resize(1)
    one = model.prepare(x[:1])
    args = (s["warmup_runs"], s["min_runs"], s["min_seconds"])
    row["latency"] = {"all_cores": {"threads": n_all, **summarize(time_calls(model, one, *args))}}
    del model
    single = adapter(job["path"], 1, images.shape[1:])
    single.resize(1)
    row["latency"]["one_thread"] = {"threads": 1, **summarize(time_calls(single, single.prepare(x[:1]), *args))}
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM first: ru_maxrss survives exec on Linux, so a child of a
    big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def measure_isolated(job: dict, timeout: float = 1800, scratch: Path | None = None) -> dict:
    """``measure(job)`` in a fresh child process; a failure or crash becomes ``{"status": "failed"}``.
    ``scratch``: where the job's temporary files go (None: the system's)."""
    base = {k: job[k] for k in ("artifact", "format", "runtime", "precision", "bytes") if k in job}
    base["file"] = Path(job["path"]).name
    env = dict(os.environ)
    if job.get("pythonpath"):
        env["PYTHONPATH"] = os.pathsep.join([job["pythonpath"], env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory(prefix="compress-bench-", dir=scratch) as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "row.json"
        job_file.write_text(json.dumps({**job, "out": str(out_file)}))
        try:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--job", str(job_file)],
                                  capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {**base, "status": "failed", "timed_out": True, "reason": f"timed out after {timeout:.0f} s"}
        if proc.returncode == 0 and out_file.exists():
            return {**base, "status": "ok", **json.loads(out_file.read_text())}
    return {**base, "status": "failed", "reason": _reason(proc)}


def _reason(proc) -> str:
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    if proc.returncode < 0:
        return f"the runtime crashed (signal {-proc.returncode})" + (f": {lines[-1][:200]}" if lines else "")
    return lines[-1][:300] if lines else f"exit code {proc.returncode}"


# --- the machine and the results document --------------------------------------------------------------

def cpu_name() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    found = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        found.setdefault(key.strip().lower(), value.strip())
    # x86 names its CPU in "model name"; a Raspberry Pi puts the board in "model", other ARM boards "hardware"
    return found.get("model name") or found.get("model") or found.get("hardware") or platform.machine()


def machine_info(device: str = "") -> dict:
    from importlib import metadata

    versions = {}
    for pkg in ("numpy", "onnxruntime", "ai-edge-litert", "tflite-runtime", "torch"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"device": device or platform.node(), "cpu": cpu_name(), "cores": os.cpu_count(),
            "arch": platform.machine(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "runtimes": versions}


def results_doc(run: dict, machine: dict, settings: dict, rows: list) -> dict:
    """The one results.json schema, for the host, a board and an Android phone alike."""
    return {"schema": SCHEMA, "run": run, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine,
            "settings": settings, "rows": rows}


# --- command line ------------------------------------------------------------------------------------------

def run_bundle(folder: Path, out: Path, threads: int, device: str, accuracy_only: bool = False) -> dict:
    """Measure every model a bundle lists; write and return the results document. Rows carry each image's
    predicted class (the bundle's eval set is small) so another machine's results can be compared per image."""
    spec = json.loads((folder / "bundle.json").read_text())
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if schema != BUNDLE_SCHEMA:  # its keys may differ: a KeyError halfway would say nothing
        raise BadBundle(f"{folder / 'bundle.json'} is of format {schema!r}, not {BUNDLE_SCHEMA!r}; rebuild the "
                        "bundle with 'compress bundle' and copy it here again")
    settings = {**spec["settings"], **({"threads": threads} if threads else {}), "predictions": True,
                **({"accuracy_only": True} if accuracy_only else {})}
    rows = []
    for entry in spec["models"]:
        job = {**entry, "path": str(folder / entry["file"]), "adapter": entry["runtime"],
               "data": str(folder / spec["data"]), "settings": settings}
        row = measure_isolated(job)
        print(row_line(row), flush=True)
        rows.append(row)
    doc = results_doc(spec["run"], machine_info(device), settings, rows)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return doc


def row_line(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['artifact']:<22} FAILED: {row['reason']}"
    if "latency" not in row:
        return f"{row['artifact']:<22} top1 {100 * row['top1']:6.2f}%  (accuracy only)"
    one = row["latency"]["one_thread"]
    return (f"{row['artifact']:<22} top1 {100 * row['top1']:6.2f}%  p50 {one['p50_ms']:.3f} ms  "
            f"p90 {one['p90_ms']:.3f} ms  (1 thread)  {row['throughput']['images_per_s']:.0f} img/s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Measure every model of a compress bundle.")
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--out", type=Path, default=Path("results.json"))
    parser.add_argument("--threads", type=int, default=0, help="threads of the all-cores setting (0 = all)")
    parser.add_argument("--device", default="", help="name for this device in the report (default: hostname)")
    parser.add_argument("--accuracy-only", action="store_true",
                        help="skip latency and throughput (under an emulator they mean nothing)")
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        job = json.loads(args.job.read_text())
        Path(job["out"]).write_text(json.dumps(measure(job)))
        return 0
    if not (args.bundle / "bundle.json").is_file():
        print(f"error: {args.bundle / 'bundle.json'} not found; run from an unpacked bundle or pass --bundle",
              file=sys.stderr)
        return 2
    if not args.out.parent.is_dir():  # checked now, not after minutes of measuring
        print(f"error: --out {args.out}: folder {args.out.parent} does not exist; create it or pass another --out",
              file=sys.stderr)
        return 2
    doc = run_bundle(args.bundle, args.out, args.threads, args.device, args.accuracy_only)
    return 0 if any(r["status"] == "ok" for r in doc["rows"]) else 2


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeMissing, BadBundle) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
