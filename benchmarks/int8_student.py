"""A trained run's student, re-quantized with the current code, timed against the run's own fp32 files: TFLite
int8 (litert-torch PT2E, as the quantize stage converts) and ONNX Runtime int8 ('x86' static QDQ), each with its
int8 audit, beside the int8 files the run itself wrote.

    .venv/bin/python benchmarks/int8_student.py RUN_DIR [--calls 300]

Batch 1, one thread, the files timed in interleaved rounds (so load on the machine hits them alike); the
calibration images are the run's own test images (the figures are latency, not accuracy).
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _runners(files: dict[str, Path]) -> dict:
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    out = {}
    for name, path in files.items():
        if path.suffix == ".tflite":
            interp = Interpreter(model_path=str(path), num_threads=1)
            interp.allocate_tensors()
            det = interp.get_input_details()[0]
            x = np.zeros(det["shape"], det["dtype"])
            out[name] = lambda i=interp, d=det, x=x: (i.set_tensor(d["index"], x), i.invoke())
        else:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            inp = sess.get_inputs()[0]
            x = np.zeros([1, *inp.shape[1:]], np.float32)
            out[name] = lambda s=sess, n=inp.name, x=x: s.run(None, {n: x})
    return out


def main() -> None:
    from pipeline.export import int8_audit, litert_convert, ort_quant
    from pipeline.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    run = args.run_dir
    model, ckpt = load_model(run / "distill" / "student.pt")
    c, size = ckpt["meta"]["channels"], ckpt["meta"]["size"]
    calib = np.random.default_rng(0).standard_normal((32, c, size, size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        int8 = litert_convert.convert_model(model.eval(), "int8", (c, size, size), calib)
        int8.export(str(tmp / "tflite_int8.tflite"))
        ort_quant.preprocess(run / "simplify" / "onnx_simplified.onnx", tmp / "pre.onnx")
        ort_quant.static(tmp / "pre.onnx", tmp / "onnx_int8_x86.onnx", calib, "x86", "MinMax", True, [])
        files = {"tflite_fp32": run / "quantize" / "tflite_fp32.tflite",
                 "tflite_int8 (run's)": run / "quantize" / "tflite_int8.tflite",
                 "tflite_int8 (now)": tmp / "tflite_int8.tflite",
                 "onnx_simplified": run / "simplify" / "onnx_simplified.onnx",
                 "onnx_int8_x86 (run's)": run / "quantize" / "onnx_int8_x86.onnx",
                 "onnx_int8_x86 (now)": tmp / "onnx_int8_x86.onnx"}
        runners = _runners(files)
        for fn in runners.values():
            for _ in range(20):
                fn()
        times = {n: [] for n in runners}
        for _ in range(args.calls):
            for name, fn in runners.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        audits = {n: int8_audit.audit(p)["line"] for n, p in files.items()}
    med = {n: 1000 * float(np.median(t)) for n, t in times.items()}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"{run}/distill/student.pt, {c}x{size}x{size}, {cpu}, batch 1, one thread, median of {args.calls}\n")
    print("| file | p50 ms | / fp32 | audit |\n|---|---|---|---|")
    for name in files:
        ref = med["tflite_fp32" if name.startswith("tflite") else "onnx_simplified"]
        print(f"| {name} | {med[name]:.3f} | {med[name] / ref:.2f}x | {audits[name]} |")


if __name__ == "__main__":
    main()
