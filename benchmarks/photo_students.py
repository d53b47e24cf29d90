"""Which student the photos config ships: every candidate trained on the photo folder with the config's student
recipe, quantized and benchmarked by the pipeline, accuracy beside int8 latency.

    .venv/bin/python benchmarks/photo_students.py --folder /tmp/photos --teacher RUN/teacher/model.pt \
        --work /tmp/students [--archs mobilenet_v3_small mobilenet_v2 ...] [--seeds 0 1]

Each (arch, seed) is one `compress -c photos benchmark` run in WORK/<arch>-<seed>, all sharing one run-cache:
the teacher is the given checkpoint (`teacher.epochs=0`, only evaluated), the student trains alone
(`distill.method=student`: no teacher term, so the architectures compare on their own, and no adapt stage), then
export, simplify, post-training quantize (TFLite fp32 and int8, ONNX Runtime x86 int8; no QAT) and benchmark on
this machine, batch 1, one thread. benchmarks/results/photo_students.md and .json are rewritten after every run,
so a stopped study keeps what it measured; a finished run is read back rather than trained again.

Latency depends on the architecture, not on the trained weights, so the table also carries each net's TFLite
int8/fp32 figures at 96 px from benchmarks/results/int8_speed.json (measured on a CPU with VNNI, where int8 kernels
pay off as on the phones and boards this config ships to), beside the ones measured here.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ARCHS = ("mobilenet_v3_small", "mobilenet_v3_small_relu", "mobilenet_v3_small_minimal", "mobilenet_v2",
         "shufflenet_v2_x1_0")


def command(args, arch: str, seed: int, run: Path) -> list[str]:
    sets = {"data.root": args.folder, "teacher.weights": args.teacher, "teacher.epochs": 0, "student.arch": arch,
            "seed": seed, "distill.method": "student", "distill.baseline": "false", "quantize.qat": "off",
            "quantize.targets": "[x86]", "quantize.tflite": "[fp32,int8]"}
    cmd = [str(ROOT / ".venv/bin/compress"), "-c", "photos", "-r", str(run), "--cache-dir", str(args.work / ".cache")]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd + ["benchmark"]


def read(run: Path) -> dict | None:
    """What one finished run measured, or None."""
    try:
        manifest = json.loads((run / "manifest.json").read_text())
        rows = json.loads((run / "benchmark/results.json").read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return None
    distill = manifest["stages"]["distill"]["metrics"]
    files = {r["artifact"]: r for r in rows if r.get("status") == "ok"}

    def ms(name):
        return files.get(name, {}).get("latency", {}).get("one_thread", {}).get("p50_ms")

    return {"val_top1": distill["val_top1"], "test_top1": distill["test_top1"],
            "epoch_s": distill.get("seconds_per_epoch"),
            "int8_val_top1": files.get("tflite_int8", {}).get("val_top1"),
            "int8_test_top1": files.get("tflite_int8", {}).get("top1"),
            "ort_int8_test_top1": files.get("onnx_int8_x86", {}).get("top1"),
            "tflite_fp32_ms": ms("tflite_fp32"), "tflite_int8_ms": ms("tflite_int8"),
            "onnx_fp32_ms": ms("onnx_simplified"), "ort_int8_ms": ms("onnx_int8_x86"),
            "int8_audit": files.get("tflite_int8", {}).get("audit", {}).get("line"),
            "cpu": json.loads((run / "benchmark/results.json").read_text())["machine"].get("cpu")}


def vnni_latency() -> dict:
    """TFLite fp32 / int8 ms at 96 px per net from int8_speed.json (the VNNI machine's table)."""
    try:
        state = json.loads((RESULTS / "int8_speed.json").read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    for name, r in state.get("results", {}).get("96", {}).items():
        lat = (r or {}).get("latency", {})
        if lat.get("tflite_fp32") and lat.get("tflite_int8"):
            out[name] = (lat["tflite_fp32"]["median_ms"], lat["tflite_int8"]["median_ms"])
    return out


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def num(x, spec="{:.3f}") -> str:
    return "-" if x is None else spec.format(x)


def write(results: dict, args, started: str) -> None:
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=1) + "\n")
    vnni = vnni_latency()
    cpus = sorted({r["cpu"] for runs in results.values() for r in runs.values() if r})
    lines = [
        "# The photos config's student: accuracy against int8 latency", "",
        "Regenerate: `.venv/bin/python benchmarks/photo_students.py --folder /tmp/photos --teacher "
        f"<run>/teacher/model.pt --work /tmp/students --seeds {' '.join(map(str, args.seeds))}"
        + ("" if list(args.archs) == list(ARCHS) else f" --archs {' '.join(args.archs)}") + "`; rows of other archs "
        "are kept from earlier invocations (their seeds column says how many ran).", "",
        "Each candidate trained alone (`distill.method=student`), 4 epochs of the config's student recipe, on the "
        "12,000-photo demo folder (`benchmarks/make_photo_folder.py`, 1,080 validation / 1,198 test images), then "
        "the pipeline's post-training int8 (no QAT). Top-1 is the mean (± standard deviation) over the seeds run "
        f"(each seed: weight init and data order). Measured on {', '.join(cpus) or '-'} (model name from "
        f"/proc/cpuinfo), 2 cores, table written {started}; latency batch 1, one thread, median (the benchmark stage). "
        "s / epoch and the 'here' latencies are wall times: speed figures only where nothing else shared the CPU "
        "(other work did in the runs of 2026-12-05/06, so the VNNI columns, from int8_speed.json, are the "
        "latency to compare).", "",
        "| student | seeds | val top-1 % | test top-1 % | TFLite int8 test % | ORT int8 test % | s / epoch "
        "| TFLite fp32 / int8 ms here | int8/fp32 here | TFLite fp32 / int8 ms, VNNI CPU | int8/fp32 VNNI "
        "| int8 file here |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch, runs in results.items():
        done = [r for r in runs.values() if r]
        if not done:
            continue

        def mean(k):
            vals = [r[k] for r in done if r.get(k) is not None]
            return statistics.fmean(vals) if vals else None

        def spread(k):  # the seeds' standard deviation, where there are several
            vals = [r[k] for r in done if r.get(k) is not None]
            return f" ± {100 * statistics.stdev(vals):.2f}" if len(vals) > 1 else ""

        fp, i8 = mean("tflite_fp32_ms"), mean("tflite_int8_ms")
        v = vnni.get(arch)
        lines.append(
            f"| {arch} | {len(done)} | {pct(mean('val_top1'))}{spread('val_top1')} "
            f"| {pct(mean('test_top1'))}{spread('test_top1')} "
            f"| {pct(mean('int8_test_top1'))} | {pct(mean('ort_int8_test_top1'))} | {num(mean('epoch_s'), '{:.1f}')} "
            f"| {num(fp)} / {num(i8)} | {num(i8 / fp if fp and i8 else None, '{:.2f}x')} "
            f"| {num(v[0] if v else None)} / {num(v[1] if v else None)} "
            f"| {num(v[1] / v[0] if v else None, '{:.2f}x')} | {done[-1].get('int8_audit') or '-'} |")
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", required=True)
    ap.add_argument("--teacher", required=True, help="a trained photos teacher checkpoint (teacher/model.pt)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--out", default="photo_students")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    previous = {}
    try:
        previous = json.loads((RESULTS / f"{args.out}.json").read_text())
    except (OSError, ValueError):
        pass
    results = {a: dict(runs) for a, runs in previous.items()}  # rows of archs not asked for this time stay
    for arch in args.archs:
        results.setdefault(arch, {})
    for seed in args.seeds:  # every arch at one seed before the next seed: a stopped study compares them all
        for arch in args.archs:
            run = args.work / f"{arch}-{seed}"
            got = read(run)
            if got is None:
                print(f"== {arch} seed {seed}", flush=True)
                proc = subprocess.run(command(args, arch, seed, run), cwd=ROOT)
                got = read(run) if proc.returncode == 0 else None
            results[arch][str(seed)] = got
            write(results, args, started)
    print((RESULTS / f"{args.out}.md").read_text())
    sys.exit(0)


if __name__ == "__main__":
    main()
