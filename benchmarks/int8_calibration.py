"""TFLite int8 conversion at each calibration batch size: time, activation scales and accuracy.

Converts a finished run's distilled student as the quantize stage does (pipeline/export/litert_convert.py
``_int8``: PT2E, litert-torch, the stage's own calibration images) once per ``--batch``, each in a fresh process
with one torch thread (as the stage's int8 converter runs on two cores), and prints per batch size: seconds, the
ratio to the first batch size, the largest relative change of any tensor's int8 scale from the first file's, and
top-1 on the chosen splits (validation and test by default) with the share of images whose class agrees with
PyTorch fp32.

    .venv/bin/python benchmarks/int8_calibration.py -c default -r runs/default --batch 1 32
    .venv/bin/python benchmarks/int8_calibration.py -c photos -r runs/photos --set data.root=data/photos --batch 1 32
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ONE = """
import json, sys, time
import numpy as np
from pathlib import Path
from pipeline import models
from pipeline.export import litert_convert
spec = json.loads(sys.argv[1])
calib = np.load(spec["calibration"])
model, _ = models.load_model(Path(spec["checkpoint"]))
started = time.perf_counter()
converted = litert_convert._int8(model.eval(), calib.shape[1:], calib, batch=spec["batch"])
seconds = time.perf_counter() - started
Path(spec["out"]).write_bytes(bytes(converted.model_content()))
print(json.dumps({"seconds": round(seconds, 2)}))
"""

def scales(path: Path) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    return {d["name"]: d["quantization_parameters"]["scales"] for d in interp.get_tensor_details()
            if len(d["quantization_parameters"]["scales"])}


def accuracy(path: Path, ds, model, splits: list[str]) -> dict:
    import torch

    from pipeline.export import artifacts, tflite_tools

    out = {}
    for split in splits:
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y").numpy()
        if not len(y):
            continue
        pred = tflite_tools.logits(path, artifacts.Normalized(ds, x)).argmax(1)
        with torch.no_grad():
            ref = torch.cat([model(ds.normalize(x[i:i + 512])) for i in range(0, len(x), 512)]).argmax(1).numpy()
        out[split] = (100 * float((pred == y).mean()), 100 * float((pred == ref).mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("-r", "--run-dir", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], help="config override, as compress --set")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--splits", nargs="+", default=["val", "test"], choices=["train", "val", "test"])
    args = parser.parse_args()
    from pipeline import config, data, models
    from pipeline.export import artifacts

    cfg = config.load(args.config, args.set)
    ds = data.load(cfg.data, cfg.seed)
    checkpoint = args.run_dir / "distill" / "student.pt"
    model, _ = models.load_model(checkpoint)
    model.eval()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    print(f"{args.run_dir}: {cfg.quantize.calibration_images} calibration images\n")
    print("| batch | convert s | / first | largest scale change | "
          + " | ".join(f"{split} top-1 % (agrees with fp32 %)" for split in args.splits) + " |")
    print("|---|---|---|---|" + "---|" * len(args.splits))
    first_s = first_scales = None
    with tempfile.TemporaryDirectory() as tmp:
        calibration = Path(tmp) / "calibration.npy"  # the quantize stage's own images
        np.save(calibration, artifacts.calibration_images(ds, cfg.quantize.calibration_images, cfg.seed))
        for batch in args.batch:
            out = Path(tmp) / f"b{batch}.tflite"
            spec = {"checkpoint": str(checkpoint), "calibration": str(calibration), "batch": batch, "out": str(out)}
            done = subprocess.run([sys.executable, "-c", ONE, json.dumps(spec)], env=env, capture_output=True,
                                  text=True, check=True)
            seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
            now = scales(out)
            if first_s is None:
                first_s, first_scales, change = seconds, now, 0.0
            else:
                common = [k for k in now if k in first_scales and now[k].shape == first_scales[k].shape]
                change = max(float(np.max(np.abs(now[k] / first_scales[k] - 1))) for k in common)
            acc = accuracy(out, ds, model, args.splits)
            cells = " | ".join(f"{acc[k][0]:.2f} ({acc[k][1]:.2f})" if k in acc else "-" for k in args.splits)
            print(f"| {batch} | {seconds:.2f} | {seconds / first_s:.2f}x | {change:.2%} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
