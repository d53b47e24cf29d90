"""The ONNX path (export, onnxsim, ONNX Runtime static INT8) on every torchvision net at 96 and 224 px.

    .venv/bin/python benchmarks/onnx_torchvision.py [--sizes 96 224] [--out benchmarks/results/onnx_torchvision.md]

Random weights with non-trivial BatchNorm statistics; 16 random calibration/eval images. Prints and writes a
table: fp32 max |logit diff| against PyTorch after export and after onnxsim, int8 (QDQ, int8 activations)
top-1 agreement with PyTorch, file sizes, seconds per step. It checks that each step works and is faithful;
accuracy after INT8 on real data is what the quantize stage's gate measures.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline import models
from pipeline.export import onnx_tools, ort_quant


def one(arch: str, size: int, tmp: Path) -> dict:
    torch.manual_seed(0)
    model = models.create(arch, 3, 10).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(16, 3, size, size)
    with torch.no_grad():
        ref = model(x).numpy()
    row, t = {"arch": arch, "size": size}, time.perf_counter()
    onnx_tools.export(model, tmp / "a.onnx", 3, size, 17)
    row["export_s"], t = time.perf_counter() - t, time.perf_counter()
    row["fp32_diff"] = float(np.abs(onnx_tools.logits(tmp / "a.onnx", x.numpy()) - ref).max())
    import onnxsim

    simplified, ok = onnxsim.simplify(onnx_tools.load(tmp / "a.onnx"))
    onnx_tools.save(simplified, tmp / "s.onnx")
    row["simplify_s"], t = time.perf_counter() - t, time.perf_counter()
    row["sim_diff"] = float(np.abs(onnx_tools.logits(tmp / "s.onnx", x.numpy()) - ref).max()) if ok else float("nan")
    ort_quant.preprocess(tmp / "s.onnx", tmp / "p.onnx")
    ort_quant.static(tmp / "p.onnx", tmp / "q.onnx", x.numpy(), "arm", "MinMax", True, [])
    row["int8_s"] = time.perf_counter() - t
    q = onnx_tools.logits(tmp / "q.onnx", x.numpy())
    row["int8_agree"] = float((q.argmax(1) == ref.argmax(1)).mean())
    row["fp32_kb"], row["int8_kb"] = (tmp / "s.onnx").stat().st_size // 1024, (tmp / "q.onnx").stat().st_size // 1024
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/onnx_torchvision.md"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    lines = ["| net | px | export s | fp32 max diff | onnxsim s | simplified max diff | int8 s | int8 top-1 agree "
             "(16 imgs) | fp32 KB | int8 KB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for size in args.sizes:
        for arch in models.TORCHVISION_NETS:
            with tempfile.TemporaryDirectory() as tmp:
                r = one(arch, size, Path(tmp))
            lines.append(f"| {arch} | {size} | {r['export_s']:.1f} | {r['fp32_diff']:.1e} | {r['simplify_s']:.1f} | "
                         f"{r['sim_diff']:.1e} | {r['int8_s']:.1f} | {r['int8_agree']:.2f} | {r['fp32_kb']} | "
                         f"{r['int8_kb']} |")
            print(lines[-1], flush=True)
    head = (f"# ONNX path on torchvision nets\n\n`.venv/bin/python benchmarks/onnx_torchvision.py --sizes "
            f"{' '.join(map(str, args.sizes))}` on {platform.processor() or platform.machine()}, 2 threads, a "
            "shared 2-core machine (seconds are noisy). Random weights.\n\n")
    args.out.write_text(head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
