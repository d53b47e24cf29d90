"""Peak memory of evaluating an ONNX artifact on a photo split: the quantize stage's batch-by-batch
normalisation (artifacts.Normalized) against normalising the whole split to float32 first (the old way).

    .venv/bin/python benchmarks/quantize_memory.py [--images 2000] [--size 224] [--batch 500]

Each way runs in its own fresh process on the same synthetic uint8 split (N x 3 x S x S, held in RAM as the
decode cache's pages would be once read) and a tiny ONNX classifier, so the figures are the cost of the inputs,
not of the model. Prints, per way, the peak resident memory above what the process held once the uint8 split
existed (ru_maxrss minus the RSS at that point), the seconds of the evaluation, and the ratio to the old way;
the logits of both ways must be identical.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(args) -> None:
    import numpy as np
    import torch

    from pipeline.data import Dataset
    from pipeline.export import artifacts, onnx_tools

    torch.set_num_threads(1)
    x = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    y = torch.zeros(args.images, dtype=torch.int64)
    ds = Dataset("bench", x, y, x, y, [str(i) for i in range(10)], stats=((0.5,) * 3, (0.25,) * 3))
    before = rss_mib()
    started = time.perf_counter()
    feed = artifacts.normalized(ds, ds.test_x) if args.mode == "whole" else artifacts.Normalized(ds, ds.test_x)
    out = onnx_tools.logits(args.model, feed, args.batch, threads=1)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(args.logits, out)
    print(json.dumps({"mode": args.mode, "uint8_mib": x.numel() / 2**20, "peak_above_mib": peak - before,
                      "seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=500, help="quantize.eval_batch_size")
    ap.add_argument("--mode", choices=["whole", "batched"], help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--logits", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return child(args)

    import numpy as np
    import torch

    from deploy.runner import cpu_name
    from pipeline.export import onnx_tools

    tmp = Path(tempfile.mkdtemp(prefix="bench-qmem-"))
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 10))
    onnx_tools.export(net, tmp / "tiny.onnx", 3, args.size, 17)
    rows = {}
    for mode in ("whole", "batched"):
        cmd = [sys.executable, __file__, "--mode", mode, "--model", str(tmp / "tiny.onnx"), "--logits",
               str(tmp / f"{mode}.npy"), "--images", str(args.images), "--size", str(args.size),
               "--batch", str(args.batch)]
        rows[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    same = np.array_equal(np.load(tmp / "whole.npy"), np.load(tmp / "batched.npy"))
    print(f"{cpu_name()}, {platform.machine()}; {args.images} images of 3 x {args.size} x {args.size} "
          f"({rows['whole']['uint8_mib']:.0f} MiB as uint8), eval batch {args.batch}, 1 thread")
    print("| way | peak memory above the uint8 split (MiB) | vs whole split | seconds | vs whole split |")
    print("|---|---|---|---|---|")
    base = rows["whole"]
    for mode, label in (("whole", "whole split to float32 first (old)"), ("batched", "artifacts.Normalized")):
        r = rows[mode]
        print(f"| {label} | {r['peak_above_mib']:.0f} | {r['peak_above_mib'] / base['peak_above_mib']:.2f}x | "
              f"{r['seconds']:.2f} | {r['seconds'] / base['seconds']:.2f}x |")
    print(f"identical logits: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
