"""Is any accuracy left in a run's BatchNorm statistics? For each trained model of a run folder: the validation
top-1 the run reported, the validation top-1 after a further recalibration over 100 training batches of 64 (a
sample the run did not use), the gap between the two, and the model's final training accuracy.

    .venv/bin/python benchmarks/bn_recalibration.py RUN_DIR [-c CONFIG] [--set key=value ...]

The config (and --set) must be the run's own, so the data split is the one it trained on.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = (("teacher", "teacher/model.pt", "teacher", "teacher/metrics.jsonl"),
          ("distilled student", "distill/student.pt", "student", "distill/student/metrics.jsonl"),
          ("student alone", "distill/baseline.pt", "student", "distill/baseline/metrics.jsonl"))


def recalibrated_val(model, ds, batches: int = 100, batch: int = 64, seed: int = 12345) -> float:
    """Validation top-1 after recomputing every BatchNorm layer's statistics over ``batches`` x ``batch``
    training images drawn with a seed the run never used."""
    from pipeline.train import batchnorm
    from pipeline.train.evaluate import evaluate

    model.train()

    def forward(xb):
        model(ds.normalize(xb))

    batchnorm.recalibrate(model, ds.train_x, forward, n=batches * batch, batch_size=batch, seed=seed)
    return evaluate(model.eval(), ds, "val", batch_size=256)["val_top1"]


def main() -> None:
    from pipeline import config, data, models

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("-c", "--config", default="photos")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    cfg = config.load(args.config, args.set)
    ds = data.load(cfg.data, cfg.seed)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"run {args.run_dir}, {cpu}, torch {torch.__version__}\n")
    print("| model | reported val top-1 % | after 100 more batches % | gap (pts) | final train top-1 % |")
    print("|---|---|---|---|---|")
    for name, ckpt, _, log in MODELS:
        path = args.run_dir / ckpt
        if not path.is_file():
            continue
        model, _ = models.load_model(path)
        history = [json.loads(line) for line in (args.run_dir / log).read_text().splitlines()]
        reported = history[-1]["val_top1"]  # the checkpoint holds the final epoch
        after = recalibrated_val(model, ds)
        print(f"| {name} | {100 * reported:.2f} | {100 * after:.2f} | {100 * (after - reported):+.2f} | "
              f"{100 * history[-1]['train_top1']:.2f} |")


if __name__ == "__main__":
    main()
