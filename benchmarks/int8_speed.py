"""INT8 against fp32 on this CPU, TFLite and ONNX Runtime, with an int8 coverage audit of every int8 file.

    taskset -c 1 env OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/int8_speed.py \
        [--sizes 96 224] [--nets NAME ...] [--out int8_speed] [--calls 250] [--core 1]

For each net and size (all nets at the first size, then the next size), random init weights (seeded), 10 classes,
BatchNorm statistics from a few train-mode forward passes on random data, then eval mode:

- TFLite fp32 and int8 through litert-torch as the pipeline converts them (pipeline/export/litert_convert.py: NHWC
  input wrapper, PT2E symmetric per-channel int8 on a strict export, 32 random calibration images);
- ONNX fp32 (the pipeline's legacy exporter, opset 17, then onnxsim as the simplify stage runs it) and ONNX
  Runtime static QDQ int8 for the 'x86' target (uint8 activations, int8 per-channel weights, MinMax), after
  onnxruntime's quant_pre_process, as stages/quantize.py does it;
- latency: batch 1, one thread, the process pinned to one core; after a warm-up, the four files are timed in
  interleaved rounds (every round times each file in turn, the order alternating) so that background load hits
  fp32 and int8 alike; median of all calls;
- the int8 audit of pipeline/export/int8_audit.py (XNNPACK partitions and ops left outside them; ORT's optimized graph:
  Q/DQ and Transpose nodes, float ops left, share of MACs in int8 kernels).

Each net runs in a child process (a converter crash or its memory stays there); benchmarks/results/<out>.md and
.json are rewritten after every net, so a stopped run keeps what it measured.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTEROP_THREADS",
             "TF_NUM_INTRAOP_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

NETS = ("mobilenet_v3_small", "mobilenet_v3_small_relu", "mobilenet_v3_small_minimal", "mobilenet_v3_small_relu_gate",
        "mobilenet_v3_small_decomposed", "mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x1_0", "resnet18")
CLASSES, CALIB_IMAGES, SEED = 10, 32, 0


# ---- nets ---------------------------------------------------------------------------------------------------

def _activations():
    """The ways of writing mobilenet_v3_small's hard-swish / hard-sigmoid that this benchmark compares:
    name -> (hard-swish module, hard-sigmoid module)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Fn(nn.Module):
        def __init__(self, fn, label):
            super().__init__()
            self.fn, self.label = fn, label

        def forward(self, x):
            return self.fn(x)

        def extra_repr(self):
            return self.label

    def const(value):
        """A constant of x's rank (1, 1, 1, 1) on feature maps, so that every input of the elementwise op is 4-D
        (see the transpose probe); (1, 1) on the classifier's 2-D features, which must stay 2-D."""
        base = torch.tensor(value)
        return lambda x: base.reshape((1,) * x.dim())

    c3, c6, c16 = const(3.0), const(6.0), const(1 / 6)
    return {
        "relu": (lambda: nn.ReLU(), lambda: nn.ReLU()),
        # the brief's decomposition: x * relu6(x + 3) / 6 and relu6(x + 3) / 6
        "decomposed": (lambda: Fn(lambda x: x * F.relu6(x + 3.0) / 6.0, "x*relu6(x+3)/6"),
                       lambda: Fn(lambda x: F.relu6(x + 3.0) / 6.0, "relu6(x+3)/6")),
        "hardtanh": (lambda: Fn(lambda x: x * F.hardtanh(x + 3.0, 0.0, 6.0) * (1 / 6), "x*hardtanh(x+3,0,6)*(1/6)"),
                     lambda: Fn(lambda x: F.hardtanh(x + 3.0, 0.0, 6.0) * (1 / 6), "hardtanh(x+3,0,6)*(1/6)")),
        "clamp": (lambda: Fn(lambda x: x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0, "x*clamp(x+3,0,6)/6"),
                  lambda: Fn(lambda x: torch.clamp(x + 3.0, 0.0, 6.0) / 6.0, "clamp(x+3,0,6)/6")),
        # constants as 4-D tensors (1,1,1,1) instead of Python scalars
        "const4d": (lambda: Fn(lambda x: x * F.relu6(x + c3(x)) / c6(x), "x*relu6(x+T3)/T6, T 4-D"),
                    lambda: Fn(lambda x: F.relu6(x + c3(x)) / c6(x), "relu6(x+T3)/T6, T 4-D")),
        "const4d_mul": (lambda: Fn(lambda x: x * F.relu6(x + c3(x)) * c16(x), "x*relu6(x+T3)*T(1/6), T 4-D"),
                        lambda: Fn(lambda x: F.relu6(x + c3(x)) * c16(x), "relu6(x+T3)*T(1/6), T 4-D")),
    }


def variants() -> dict[str, tuple[str, str | None]]:
    """Every net name this script knows: name -> (registered arch, activation variant or None). The registry's
    rows (mobilenet_v3_small_relu and _minimal included) are built as the pipeline builds them; the others are
    mobilenet_v3_small with its activations swapped here ('relu_gate': ReLU for hard-swish and for the squeeze-excite
    gate's hard-sigmoid, the first 'relu' variant this benchmark measured)."""
    from pipeline.models import torchvision_nets

    table = {n: (n, None) for n in torchvision_nets.TABLE}
    for var in ("decomposed", "hardtanh", "clamp", "const4d", "const4d_mul"):
        table[f"mobilenet_v3_small_{var}"] = ("mobilenet_v3_small", var)
    table["mobilenet_v3_small_relu_gate"] = ("mobilenet_v3_small", "relu")
    return table


def replace_activations(net, variant: str) -> int:
    """Swap every nn.Hardswish / nn.Hardsigmoid in ``net`` for the variant's modules; how many were swapped."""
    from torch import nn

    hswish, hsig = _activations()[variant]
    swapped = 0
    for name, module in list(net.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Hardswish):
                setattr(module, child_name, hswish())
            elif isinstance(child, nn.Hardsigmoid):
                setattr(module, child_name, hsig())
            else:
                continue
            swapped += 1
    return swapped


def build(name: str, size: int, seed: int = SEED):
    """The net ``name`` as the pipeline builds it (pipeline.models.torchvision_nets, 3 channels, 10 classes), with
    random init weights from ``seed``, BatchNorm statistics from 4 train-mode passes on random data, eval mode."""
    import torch

    from pipeline.models import torchvision_nets

    arch, variant = variants()[name]
    torch.manual_seed(seed)
    model = torchvision_nets.create(arch, 3, CLASSES)
    model.__dict__.pop("_extractor", None)  # the FX cache of the unmodified net; export only runs forward()
    if variant:
        assert replace_activations(model.net, variant) > 0
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, size, size, generator=gen))
    return model.eval()


# ---- files ----------------------------------------------------------------------------------------------------

def calibration(size: int, n: int = CALIB_IMAGES, seed: int = SEED + 2) -> np.ndarray:
    """``n`` random normalised images, NCHW float32, for both converters."""
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def make_tflite(model, size: int, calib: np.ndarray, folder: Path) -> dict:
    """TFLite fp32 and int8 through the pipeline's own converter functions (pipeline/export/litert_convert.py)."""
    from pipeline.export import litert_convert

    out, errors = {}, []
    for precision in ("fp32", "int8"):
        started = time.perf_counter()
        try:
            path = folder / f"tflite_{precision}.tflite"
            litert_convert.convert_model(model, precision, (3, size, size), calib).export(str(path))
        except Exception as exc:  # noqa: BLE001 - the other precision may still convert
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            errors.append(f"{precision}: {type(exc).__name__}: {first}")
            continue
        out[precision] = {"path": str(path), "convert_s": round(time.perf_counter() - started, 1),
                          "kb": round(path.stat().st_size / 1024)}
    if errors:
        out["errors"] = errors
    return out


def make_onnx(model, size: int, calib: np.ndarray, folder: Path) -> dict:
    """ONNX fp32 as export + simplify write it, and the 'x86' static QDQ int8 as the quantize stage makes it
    (quant_pre_process, then quantize_static: uint8 activations, int8 per-channel weights, MinMax)."""
    from rich.console import Console

    from pipeline.export import onnx_tools, ort_quant
    from stages.simplify import simplify

    started = time.perf_counter()
    raw, fp32, pre, int8 = (folder / n for n in ("raw.onnx", "onnx_fp32.onnx", "pre.onnx", "onnx_int8.onnx"))
    onnx_tools.export(model, raw, 3, size, 17)
    proto, tool = simplify(onnx_tools.load(raw), "auto", Console(quiet=True))
    onnx_tools.save(proto, fp32)
    out = {"fp32": {"path": str(fp32), "convert_s": round(time.perf_counter() - started, 1), "simplifier": tool,
                    "kb": round(fp32.stat().st_size / 1024)}}
    started = time.perf_counter()
    ort_quant.preprocess(fp32, pre)
    ort_quant.static(pre, int8, calib, "x86", "MinMax", True, [])
    out["int8"] = {"path": str(int8), "convert_s": round(time.perf_counter() - started, 1),
                   "kb": round(int8.stat().st_size / 1024)}
    return out


# ---- timing ---------------------------------------------------------------------------------------------------

def tflite_runner(path: str, x_nchw: np.ndarray):
    """A zero-argument call running the TFLite file once (set input, invoke), one thread, default delegate;
    and a function giving float logits for NCHW float images."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path, num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def feed(img_nchw):
        x = img_nchw.transpose(0, 2, 3, 1)
        if np.dtype(inp["dtype"]) != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        return np.ascontiguousarray(x.astype(inp["dtype"]))

    x = feed(x_nchw[:1])

    def call():
        interp.set_tensor(inp["index"], x)
        interp.invoke()

    def logits(images):
        rows = []
        for i in range(len(images)):
            interp.set_tensor(inp["index"], feed(images[i:i + 1]))
            interp.invoke()
            y = interp.get_tensor(out["index"]).astype(np.float32)
            if np.dtype(out["dtype"]) != np.float32:
                scale, zero = out["quantization"]
                y = (y - zero) * scale
            rows.append(y)
        return np.concatenate(rows)
    return call, logits


def onnx_runner(path: str, x_nchw: np.ndarray):
    from pipeline.export import onnx_tools

    sess = onnx_tools.session(Path(path), threads=1)
    name = sess.get_inputs()[0].name
    x = np.ascontiguousarray(x_nchw[:1])

    def call():
        sess.run(None, {name: x})

    def logits(images):
        return np.concatenate([sess.run(None, {name: images[i:i + 1]})[0] for i in range(len(images))])
    return call, logits


def interleaved(calls: dict, total: int, rounds: int = 10, warmup: int = 20) -> dict:
    """Per-call seconds of each zero-argument callable: ``warmup`` untimed calls each, then ``rounds`` rounds in
    which every callable runs ceil(total / rounds) timed calls in turn (the order reversed every other round)."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    per = -(-total // rounds)
    times = {k: [] for k in calls}
    names = list(calls)
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            fn, bucket = calls[k], times[k]
            for _ in range(per):
                t0 = time.perf_counter()
                fn()
                bucket.append(time.perf_counter() - t0)
    return {k: {"median_ms": float(np.median(v)) * 1e3, "p10_ms": float(np.percentile(v, 10)) * 1e3,
                "p90_ms": float(np.percentile(v, 90)) * 1e3, "calls": len(v)} for k, v in times.items()}


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    return {"top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "max_abs_diff": float(np.abs(a - b).max()), "logit_range": float(np.abs(a).max())}


# ---- one net, one size (child process) ------------------------------------------------------------------------

def run_one(name: str, size: int, calls: int, folder: Path) -> dict:
    import torch

    from pipeline.export import int8_audit

    torch.set_num_threads(1)
    folder.mkdir(parents=True, exist_ok=True)
    result = {"net": name, "size": size}
    started = time.perf_counter()
    model = build(name, size)
    calib = calibration(size)
    check = calibration(size, 16, seed=SEED + 3)
    with torch.no_grad():
        reference = model(torch.from_numpy(check)).numpy()
    files = {}
    for label, maker in (("tflite", make_tflite), ("onnx", make_onnx)):
        try:
            made = maker(model, size, calib, folder)
            if made.get("errors"):
                result[f"{label}_error"] = "; ".join(made.pop("errors"))
            files.update({f"{label}_{p}": v for p, v in made.items()})
        except Exception as exc:  # noqa: BLE001 - one failed route must not stop the other
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            result[f"{label}_error"] = f"{type(exc).__name__}: {first}"
            print(f"{name} {size}: {label} failed: {result[f'{label}_error']}", flush=True)
    result["files"] = files
    result["convert_s"] = round(time.perf_counter() - started, 1)

    runners, parity = {}, {}
    for key, info in files.items():
        make = tflite_runner if key.startswith("tflite") else onnx_runner
        call, logits = make(info["path"], check)
        runners[key] = call
        parity[key] = agreement(reference, logits(check))
    result["parity_vs_torch"] = parity
    result["latency"] = interleaved(runners, calls)

    audits = audit_files(files)
    result["audit"] = audits
    result["summary"] = {k: int8_audit.summary(v) for k, v in audits.items()}
    result["total_s"] = round(time.perf_counter() - started, 1)
    return result


# ---- report ---------------------------------------------------------------------------------------------------

def machine() -> dict:
    import importlib.metadata as md

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor())
    try:
        flags = set(subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split())
    except OSError:
        flags = set()
    versions = {}
    for pkg in ("torch", "torchvision", "torchao", "litert-torch", "ai-edge-litert", "onnx", "onnxruntime", "onnxsim"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": model, "cores": os.cpu_count(),
            "flags": {f: f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "amx_tile")},
            "versions": versions, "python": platform.python_version()}


def _ms(result: dict, key: str) -> float | None:
    lat = result.get("latency", {}).get(key)
    return lat["median_ms"] if lat else None


def _fmt(x, spec="{:.2f}"):
    return "—" if x is None else spec.format(x)


def _ratio(a, b):
    return None if a is None or b is None or a == 0 else b / a


def row(name: str, result: dict | None) -> str:
    cells = [name]
    if result is None:
        return "| " + name + " | " + " | ".join(["not measured"] + [""] * 10) + " |"
    tf32, tf8, ox32, ox8 = (_ms(result, k) for k in ("tflite_fp32", "tflite_int8", "onnx_fp32", "onnx_int8"))
    ta = result.get("audit", {}).get("tflite_int8")
    oa = result.get("audit", {}).get("onnx_int8")
    cells += [_fmt(tf32, "{:.3f}"), _fmt(tf8, "{:.3f}"), _fmt(_ratio(tf32, tf8), "{:.2f}x")]
    if ta:
        outside = ", ".join(f"{c} {k}" for k, c in ta["outside"].items()) or "none"
        if ta["outside_int8"]:
            outside += f" ({sum(ta['outside_int8'].values())} int8)"
        cells += [str(ta["partitions"]), outside]
    else:
        cells += ["—", result.get("tflite_error", "—")]
    cells += [_fmt(ox32, "{:.3f}"), _fmt(ox8, "{:.3f}"), _fmt(_ratio(ox32, ox8), "{:.2f}x")]
    if oa:
        qdq = f"{oa['quantize']}/{oa['dequantize']}" + (f" (+{oa['transpose']} Transpose)" if oa["transpose"] else "")
        floats = ", ".join(f"{c} {k}" for k, c in oa["float_ops"].items()) or "none"
        share = oa["int8_mac_share"]
        cells += [qdq, floats, "—" if share is None else f"{share:.1%}"]
    else:
        cells += ["—", result.get("onnx_error", "—"), "—"]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| net | TFLite fp32 ms | TFLite int8 ms | int8/fp32 | XNNPACK partitions (int8) | ops outside XNNPACK "
          "| ONNX fp32 ms | ORT int8 ms | int8/fp32 | Q/DQ nodes | float ops left | int8 MAC share |\n"
          "|---|---:|---:|---:|---:|---|---:|---:|---:|---|---|---:|")


def write_report(state: dict, out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(state, indent=1, default=str) + "\n")
    m = state["machine"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["flags"].items())
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        "# INT8 against fp32: TFLite (litert-torch PT2E, XNNPACK) and ONNX Runtime (static QDQ U8S8)",
        "",
        "Regenerate (from the repository root):",
        "",
        "```",
        *state["commands"],
        "```",
        "",
        f"- CPU: {m['cpu']} ({m['cores']} cores); {flags}",
        f"- {versions}; Python {m['python']}",
        f"- Random init weights (seed {SEED}), 10 classes, BatchNorm statistics from 4 train-mode passes on random "
        f"data, eval mode; {CALIB_IMAGES} random calibration images. Batch 1, one thread (intra-op 1, "
        "OMP_NUM_THREADS=1, process pinned to one core), median of "
        f"{state['calls']} calls per file after 20 warm-up calls, the four files of a net timed in interleaved "
        "rounds.",
        "- The 2-core machine had other work running on the other core (and sometimes this one), so absolute "
        "milliseconds are noisy: read the int8/fp32 ratios (same run, interleaved) first.",
        "- TFLite int8: litert-torch PT2E as pipeline/export/litert_convert.py (NHWC input, symmetric per-channel, "
        "strict export). ORT int8: quant_pre_process + quantize_static QDQ, uint8 activations, int8 per-channel "
        "weights, MinMax (the 'x86' target of pipeline/export/ort_quant.py). "
        "ONNX fp32 = legacy export opset 17 + onnxsim.",
        "- Audit columns from pipeline/export/int8_audit.py: XNNPACK partitions = DELEGATE nodes of the int8 file, ops "
        "outside = ops left on TFLite builtin kernels ('int8' = of those, how many compute on int8 tensors); Q/DQ, "
        "Transpose and float ops counted in ORT's ORT_ENABLE_ALL-optimized graph of the int8 file; MAC share = "
        "conv/gemm MACs in integer kernels (QLinearConv, QGemm, ...) against float Conv/Gemm/MatMul.",
        "",
    ]
    for size in state["sizes"]:
        lines += [f"## {size} px", "", HEADER]
        done = state["results"].get(str(size), {})
        missing = []
        for name in state["nets"]:
            res = done.get(name)
            if res is None:
                missing.append(name)
            if res and "error" in res:
                lines.append(f"| {name} | failed: {res['error'].replace('|', '/')[:200]} |" + " |" * 10)
            else:
                lines.append(row(name, res))
        if missing:
            lines += ["", f"Missing at {size} px (not measured: run stopped or still running): {', '.join(missing)}."]
        lines += ["", "One-line audits (int8 files):", ""]
        for name in state["nets"]:
            res = done.get(name)
            if res and "summary" in res:
                s = res["summary"]
                load = f" (load average {res['loadavg_1min_after']} as it ended)" if "loadavg_1min_after" in res else ""
                lines.append(f"- {name}: TFLite: {s.get('tflite_int8', '—')}; ORT: {s.get('onnx_int8', '—')}{load}")
        lines.append("")
    layout = [(size, name, res) for size in state["sizes"] for name in state["nets"]
              for res in [state["results"].get(str(size), {}).get(name)] if res and "audit" in res]
    if layout:
        lines += ["## TFLite layout ops (TRANSPOSE / RESHAPE counts; int8 = PT2E file)", "",
                  "p10 = the 10th percentile of the same calls: less moved by a burst of load than the median.", "",
                  "| size | net | fp32 TRANSPOSE | fp32 RESHAPE | int8 TRANSPOSE | int8 RESHAPE | int8 partitions "
                  "| TFLite fp32 ms | TFLite int8 ms | int8/fp32 | int8/fp32 of p10 |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for size, name, res in layout:
            def count(key, op, res=res):
                a = res["audit"].get(key)
                return "—" if a is None else str(a["ops"].get(op, {}).get("count", 0))
            t32, t8 = _ms(res, "tflite_fp32"), _ms(res, "tflite_int8")
            lat = res.get("latency", {})
            p32, p8 = (lat[k]["p10_ms"] if k in lat else None for k in ("tflite_fp32", "tflite_int8"))
            parts = res["audit"].get("tflite_int8", {}).get("partitions", "—")
            lines.append(f"| {size} | {name} | {count('tflite_fp32', 'TRANSPOSE')} | {count('tflite_fp32', 'RESHAPE')} "
                         f"| {count('tflite_int8', 'TRANSPOSE')} | {count('tflite_int8', 'RESHAPE')} | {parts} "
                         f"| {_fmt(t32, '{:.3f}')} | {_fmt(t8, '{:.3f}')} | {_fmt(_ratio(t32, t8), '{:.2f}x')} "
                         f"| {_fmt(_ratio(p32, p8), '{:.2f}x')} |")
        lines.append("")
    if state.get("notes"):
        lines += ["## Notes", "", *state["notes"], ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def audit_files(files: dict) -> dict:
    from pipeline.export import int8_audit

    audits = {}
    for key in ("tflite_int8", "tflite_fp32", "onnx_int8", "onnx_fp32"):
        if key in files and Path(files[key]["path"]).exists():
            fn = int8_audit.tflite_audit if key.startswith("tflite") else int8_audit.onnx_audit
            audits[key] = fn(files[key]["path"])
    return audits


def reaudit(state: dict) -> None:
    """Audits and one-line summaries of every result again, from the files it names (after an audit fix)."""
    from pipeline.export import int8_audit

    for by_net in state["results"].values():
        for res in by_net.values():
            audits = audit_files(res.get("files", {}))
            if audits:
                res["audit"] = {**res.get("audit", {}), **audits}
                res["summary"] = {k: int8_audit.summary(v) for k, v in res["audit"].items()}


# ---- main -----------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=sorted(variants()))
    ap.add_argument("--sizes", nargs="+", type=int, default=[96, 224])
    ap.add_argument("--calls", type=int, default=250, help="timed calls per file (>= 200)")
    ap.add_argument("--out", default="int8_speed", help="name of the results files in benchmarks/results/")
    ap.add_argument("--core", type=int, default=1, help="CPU core to pin to (-1: leave the affinity alone)")
    ap.add_argument("--workdir", default=None, help="where the model files go (default: a temporary folder)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds one net may take")
    ap.add_argument("--rewrite", action="store_true",
                    help="only rewrite benchmarks/results/<out>.md from its .json (after editing its notes)")
    ap.add_argument("--reaudit", action="store_true",
                    help="recompute the int8 audits of <out>.json from its model files (if still there), rewrite md")
    ap.add_argument("--merge", action="store_true",
                    help="keep the results already in <out>.json; the nets run now replace their own rows")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})

    if args.one:  # child: one net at one size
        res = run_one(args.one, args.size, args.calls, Path(args.workdir))
        Path(args.result).write_text(json.dumps(res, default=str))
        return

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / args.out
    if args.rewrite or args.reaudit:
        state = json.loads(out.with_suffix(".json").read_text())
        if args.reaudit:
            reaudit(state)
        write_report(state, out)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="int8_speed_"))
    command = "taskset -c {} env OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/int8_speed.py {}".format(
        max(args.core, 0), " ".join(shlex.quote(a) for a in sys.argv[1:]))
    state = {"commands": [command], "machine": machine(), "nets": args.nets, "sizes": args.sizes,
             "calls": args.calls, "results": {}, "notes": []}
    if args.merge and out.with_suffix(".json").exists():
        old = json.loads(out.with_suffix(".json").read_text())
        state["results"], state["notes"] = old["results"], old.get("notes", [])
        state["commands"] = old["commands"] + [command]
        state["nets"] = old["nets"] + [n for n in args.nets if n not in old["nets"]]
        state["sizes"] = old["sizes"] + [z for z in args.sizes if z not in old["sizes"]]
    print(json.dumps(state["machine"]), flush=True)
    write_report(state, out)
    for size in args.sizes:
        for name in args.nets:
            folder = work / f"{name}_{size}"
            result_file = folder / "result.json"
            folder.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--size", str(size),
                   "--calls", str(args.calls), "--core", str(args.core), "--workdir", str(folder),
                   "--result", str(result_file)]
            started = time.perf_counter()
            print(f"== {name} {size}px", flush=True)
            try:
                proc = subprocess.run(cmd, timeout=args.timeout, capture_output=True, text=True)
                if proc.returncode == 0 and result_file.exists():
                    res = json.loads(result_file.read_text())
                else:
                    tail = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()][-3:]
                    res = {"net": name, "size": size, "error": f"exit {proc.returncode}: {' / '.join(tail)[:400]}"}
            except subprocess.TimeoutExpired:
                res = {"net": name, "size": size, "error": f"timed out after {args.timeout} s"}
            res["wall_s"] = round(time.perf_counter() - started, 1)
            res["loadavg_1min_after"] = round(os.getloadavg()[0], 2)  # the machine's load while it ran
            state["results"].setdefault(str(size), {})[name] = res
            write_report(state, out)
            if "error" in res:
                print(f"   FAILED: {res['error']}", flush=True)
            else:
                print("   " + row(name, res), flush=True)
                for k, v in res.get("summary", {}).items():
                    print(f"   {k}: {v}", flush=True)
                print(f"   {res['wall_s']} s", flush=True)
    print(f"wrote {out.with_suffix('.md')} and .json", flush=True)


if __name__ == "__main__":
    main()
