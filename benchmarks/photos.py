"""The photo setting's figures: folder decode speed, cached loads, `compress -c photos all` end to end, INT8 vs fp32.

    .venv/bin/python benchmarks/photos.py [--folder data/photos] [--run-dir runs/bench-photos]

Writes the demo folder first if it is missing (benchmarks/make_photo_folder.py, 12k photos). Then prints:
- the first decode of the folder (images/s, one process per core) and a later load from the cache (seconds);
- `compress -c photos all` from an empty run folder and an empty decode cache, then the same command again;
- from the run's results.json, MobileNetV3-Small at 96 px: ONNX Runtime INT8 / fp32 and TFLite int8 / fp32
  latency (batch 1, one thread; goals <= 0.8x and <= 0.6x) and each INT8 artifact's top-1 drop (goal <= 0.5 points on
  validation);
- the adaptive module's student against the student alone (one seed).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def decode_figures(folder: Path) -> tuple[float, float, int]:
    from pipeline import data
    from pipeline.config import DataConfig

    with tempfile.TemporaryDirectory() as cache:
        cfg = DataConfig(dataset="imagefolder", root=str(folder), image_size=96, cache_dir=cache)
        started = time.perf_counter()
        ds = data.load(cfg, seed=0)
        first = time.perf_counter() - started
        n = len(ds.train_y) + len(ds.val_y) + len(ds.test_y)
        started = time.perf_counter()
        data.load(cfg, seed=0)
        return n / first, time.perf_counter() - started, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, default=ROOT / "data" / "photos")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "bench-photos")
    args = parser.parse_args()
    if not args.folder.is_dir():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_photo_folder.py"), str(args.folder)],
                       check=True)
    rate, cached, n = decode_figures(args.folder)

    shutil.rmtree(args.run_dir, ignore_errors=True)
    cache = Path(tempfile.mkdtemp(prefix="compress-decode-"))
    cmd = [str(Path(sys.executable).with_name("compress")), "-c", "photos", "-r", str(args.run_dir),
           "--set", f"data.root={args.folder}", "--set", f"data.cache_dir={cache}", "all"]
    times = []
    for _ in range(2):
        started = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        times.append(time.perf_counter() - started)
    shutil.rmtree(cache, ignore_errors=True)

    from pipeline.report import table
    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    doc = json.loads((args.run_dir / "benchmark" / "results.json").read_text())
    rows = {r["artifact"]: r for r in table.table(doc) if r["status"] == "ok"}
    p50 = lambda name: rows[name]["latency"]["one_thread"]["p50_ms"]  # noqa: E731
    m = doc["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['os']}")
    print("\n| stage | seconds |\n|---|---|")
    for name, entry in manifest["stages"].items():
        print(f"| {name} | {entry['seconds']:.1f} |")
    print("\n| figure | value | goal |\n|---|---|---|")
    print(f"| first decode of {n} photos at 96 px | {rate:.0f} images/s | - |")
    print(f"| a later load from the decode cache | {cached:.2f} s | < 2 s |")
    print(f"| `compress -c photos all`, empty run folder and cache | {times[0] / 60:.1f} min | <= 30 min |")
    print(f"| the same command again | {times[1]:.1f} s | <= 5 s |")
    for fast, base, goal in (("onnx_int8_x86", "onnx_simplified", 0.8), ("onnx_int8_arm", "onnx_simplified", None),
                             ("tflite_int8", "tflite_fp32", 0.6)):
        if fast in rows and base in rows:
            print(f"| {fast} / {base} latency (batch 1, 1 thread) | {p50(fast) / p50(base):.2f}x "
                  f"({p50(fast):.3f} / {p50(base):.3f} ms) | {f'<= {goal}x' if goal else '-'} |")
        else:
            print(f"| {fast} / {base} latency | {fast if fast not in rows else base} missing | - |")
    for name in ("onnx_int8_x86", "onnx_int8_arm", "tflite_int8"):
        if name in rows:
            r = rows[name]
            val = f", validation {r['val_drop_pts']:+.2f}" if r.get("val_drop_pts") is not None else ""
            print(f"| {name} top-1 drop vs fp32 | test {r['drop_pts']:+.2f}{val} points | validation <= 0.5 points |")
    d = manifest["stages"]["distill"]["metrics"]
    print(f"| distilled student ({d['method']}) vs student alone, test top-1 | {100 * d['test_top1']:.2f} % vs "
          f"{100 * d.get('baseline_top1', float('nan')):.2f} % | ama higher |")


if __name__ == "__main__":
    main()
