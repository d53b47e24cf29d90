"""QAT with the teacher against post-training int8 on the photos student, seeds paired: accuracy and cost.

    .venv/bin/python benchmarks/qat_study.py --folder /work/photos --out /work/bench/qat \
        [--teacher runs/photos/teacher/model.pt] [--seeds 0 1 2] [--set KEY=VALUE ...] [--latency]

For every seed it runs `compress -c photos ... --set quantize.qat=on quantize` in its own run folder (adapt,
distill, export, simplify, then quantize: the post-training int8 files and, fine-tuned from the same distilled
student, the QAT ones). With `--teacher` every seed starts from that trained teacher (`teacher.epochs=0`), so
the seeds vary the student, its distillation and its quantization, not the teacher. `--latency` also runs the
benchmark stage on the first seed (post-training and QAT int8 files share a graph, so their latency should
match). Writes results.json and results.md beside the runs as each seed ends; reruns skip finished stages.

Per seed and file: validation and test top-1 of the fp32 student, the post-training int8 file and the QAT one;
the cost of QAT against the distilled student's training (its epochs plus the teacher-output cache): the
fine-tune alone (graph build, training steps, validation), its training steps alone, and everything QAT adds to the
quantize stage (the seconds of the same stage run again with `quantize.qat=off` in a copy of the run folder,
subtracted).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from photo_teacher import cpu_model  # noqa: E402

PAIRS = (("tflite_int8", "tflite_int8_qat"), ("onnx_int8_x86", "onnx_int8_qat"))


def run_one(seed: int, args) -> dict:
    run_dir = args.out / f"s{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    sets = [f"seed={seed}", f"data.root={args.folder}", "quantize.qat=on", *args.set]
    if args.teacher:
        sets += [f"teacher.weights={args.teacher}", "teacher.epochs=0"]

    def compress(folder: Path, stage: str, *extra: str) -> int:
        cmd = [sys.executable, "-m", "pipeline.cli", "-c", "photos", "-r", str(folder)]
        for s in [*sets, *extra]:
            cmd += ["--set", s]
        with open(run_dir / "log.txt", "a") as fh:
            return subprocess.run([*cmd, stage], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                  env={**os.environ, "COLUMNS": "120"}).returncode

    ptq_dir = args.out / f"s{seed}-ptq"  # the same run without QAT, for what QAT adds to the quantize stage
    for stage in ["quantize"] + (["benchmark"] if args.latency and seed == args.seeds[0] else []):
        if compress(run_dir, stage):
            return {"seed": seed, "rc": 1, "log_tail": (run_dir / "log.txt").read_text()[-1500:]}
    if not ptq_dir.exists():
        shutil.copytree(run_dir, ptq_dir, ignore=shutil.ignore_patterns("benchmark", "bundle"))
    if compress(ptq_dir, "quantize", "quantize.qat=off"):
        return {"seed": seed, "rc": 1, "log_tail": (run_dir / "log.txt").read_text()[-1500:]}
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    ptq_s = json.loads((ptq_dir / "manifest.json").read_text())["stages"]["quantize"]["seconds"]
    d, q = manifest["distill"]["metrics"], manifest["quantize"]["metrics"]
    arts = q["artifacts"]
    row = {"seed": seed, "rc": 0, "fp32_val": arts["tflite_int8"]["fp32_top1"], "fp32_test": q["fp32_test_top1"],
           "student_train_s": round(d["seconds_per_epoch"] * args.epochs + d["cache_seconds"], 1),
           "qat_s": q["qat"]["total_seconds"], "qat_steps_s": q["qat"]["seconds"],
           "qat_files_s": round(sum(arts[n].get("seconds", 0) + arts[n].get("convert_seconds", 0)
                                    for _, n in PAIRS), 1),
           "quantize_s": manifest["quantize"]["seconds"], "quantize_ptq_s": ptq_s}
    for ptq, qat in PAIRS:
        for name in (ptq, qat):
            e = arts.get(name, {})
            row[name] = {"status": e.get("status"), "val": e.get("val_top1"), "test": e.get("test_top1"),
                         "agreement": e.get("fakequant_agreement")}
    if "benchmark" in manifest:
        bench = manifest["benchmark"]["metrics"]["rows"]
        row["latency_ms"] = {n: bench[n]["p50_ms"] for p in PAIRS for n in p if bench.get(n, {}).get("status") == "ok"}
    return row


def pts(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def table(rows: list[dict], epochs: int) -> str:
    ok = [r for r in rows if r["rc"] == 0]
    out = ["| seed | fp32 val / test | " + " | ".join(f"{n} val / test" for p in PAIRS for n in p) + " |",
           "|---|---|" + "---|" * 4]
    for r in ok:
        cells = [f"{pts(r[n]['val'])} / {pts(r[n]['test'])}" for p in PAIRS for n in p]
        out.append(f"| {r['seed']} | {pts(r['fp32_val'])} / {pts(r['fp32_test'])} | " + " | ".join(cells) + " |")
    if not ok:
        return "no finished seed"
    out += ["", "| file | QAT - PTQ val (per seed) | QAT - PTQ test (per seed) | QAT - fp32 val | QAT - fp32 test |"
            " QAT above PTQ on every seed (val and test) |", "|---|---|---|---|---|---|"]
    for ptq, qat in PAIRS:
        have = [r for r in ok if r[ptq]["val"] is not None and r[qat]["val"] is not None]
        if not have:
            out.append(f"| {qat} | not written | | | | |")
            continue
        dv = [100 * (r[qat]["val"] - r[ptq]["val"]) for r in have]
        dt = [100 * (r[qat]["test"] - r[ptq]["test"]) for r in have]
        fv = statistics.fmean(100 * (r[qat]["val"] - r["fp32_val"]) for r in have)
        ft = statistics.fmean(100 * (r[qat]["test"] - r["fp32_test"]) for r in have)
        above = all(v > 0 and t > 0 for v, t in zip(dv, dt))
        out.append(f"| {qat} | {statistics.fmean(dv):+.2f} ({', '.join(f'{v:+.2f}' for v in dv)}) | "
                   f"{statistics.fmean(dt):+.2f} ({', '.join(f'{t:+.2f}' for t in dt)}) | {fv:+.2f} | {ft:+.2f} | "
                   f"{'yes' if above else 'no'} |")
    out += ["", f"| seed | student training s ({epochs} epochs + teacher cache) | QAT fine-tune s (its training "
            "steps) | QAT files s (convert + gate) | quantize stage s with / without QAT | QAT cost / student "
            "training: fine-tune, steps, whole stage difference |", "|---|---|---|---|---|---|"]
    for r in ok:
        train, whole = r["student_train_s"], r["quantize_s"] - r["quantize_ptq_s"]
        out.append(f"| {r['seed']} | {train:.0f} | {r['qat_s']:.0f} ({r['qat_steps_s']:.0f}) | "
                   f"{r['qat_files_s']:.0f} | {r['quantize_s']:.0f} / {r['quantize_ptq_s']:.0f} | "
                   f"{100 * r['qat_s'] / train:.0f}%, {100 * r['qat_steps_s'] / train:.0f}%, "
                   f"**{100 * whole / train:.0f}%** |")
    lat = [r for r in ok if r.get("latency_ms")]
    if lat:
        out += ["", "latency, median ms (batch 1, one thread, seed " + str(lat[0]["seed"]) + "): " +
                ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(lat[0]["latency_ms"].items()) if v)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, default=None, help="a trained teacher every seed starts from")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], help="extra override for every run")
    parser.add_argument("--latency", action="store_true", help="benchmark the first seed's files too")
    args = parser.parse_args()
    if not args.folder.is_dir():
        parser.error(f"--folder {args.folder} is not a folder: write one with benchmarks/make_photo_folder.py")
    if args.teacher and not args.teacher.is_file():
        parser.error(f"--teacher {args.teacher} is not a file: give a finished run's teacher/model.pt")
    args.folder, args.out = args.folder.resolve(), args.out.resolve()
    args.teacher = args.teacher.resolve() if args.teacher else None
    from pipeline import config as config_mod

    args.epochs = config_mod.load("photos", args.set).student.epochs
    machine = f"{cpu_model()}, {os.cpu_count()} logical CPUs"
    rows: list[dict] = []
    for seed in args.seeds:  # one at a time: each run uses every core
        rows.append(run_one(seed, args))
        (args.out / "results.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
        md = f"machine: {machine}\n\ncommand: {' '.join(sys.argv)}\n\n{table(rows, args.epochs)}\n"
        (args.out / "results.md").write_text(md)
        print(md, flush=True)
    for r in rows:
        if r["rc"] != 0:
            print(f"FAILED seed {r['seed']}:\n{r['log_tail']}")


if __name__ == "__main__":
    main()
