"""Which teacher makes the photo showcase's distillation help: teacher settings x seeds, up to the distill stage.

    .venv/bin/python benchmarks/photo_teacher.py --folder /work/photos --out /work/bench/photo_teacher \
        [--jobs 2] [--seeds 0 1 2] [--only NAME ...] [--set KEY=VALUE ...] [--cache-dir DIR]

Each setting is a list of `--set` overrides of configs/photos.yaml. For every setting and seed it runs
`compress -c photos ... distill` in its own run folder (teacher, adapt, distill; the student alone is trained
in the distill stage on the same budget), `--jobs` at a time, then reads each run's manifest and writes
results.json and results.md beside the runs: teacher and students' validation and test top-1, the paired
gain of the distilled student over the student alone per seed, and each stage's seconds. Rerunning skips
finished runs (compress's own stage cache). Runs that fail are listed with the tail of their log.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

OLD_AUGMENT = "data.augment=resized_crop_flip"  # the teacher's augmentation before the config moved to crop_flip
SETTINGS: dict[str, list[str]] = {  # each says its epochs and augmentation: the config's own have changed
    "resnet18_4ep": ["teacher.epochs=4", OLD_AUGMENT],
    "resnet18_8ep": ["teacher.epochs=8", OLD_AUGMENT],
    "resnet18_12ep": ["teacher.epochs=12", OLD_AUGMENT],
    "resnet18_6ep_cropflip": ["teacher.epochs=6", "data.augment=crop_flip"],
    "resnet18_8ep_cropflip": ["teacher.epochs=8", "data.augment=crop_flip"],
    "resnet18_12ep_cropflip": ["teacher.epochs=12", "data.augment=crop_flip"],
    "resnet18_8ep_lr0.1": ["teacher.epochs=8", "teacher.lr=0.1", OLD_AUGMENT],
    "mobilenet_v2_8ep": ["teacher.arch=mobilenet_v2", "teacher.epochs=8", OLD_AUGMENT],
}
# the config's teacher with the student that photo_students.md found on the accuracy / int8-latency front
SETTINGS["resnet18_8ep_cropflip_relu_student"] = [*SETTINGS["resnet18_8ep_cropflip"],
                                                  "student.arch=mobilenet_v3_small_relu"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_one(name: str, seed: int, args) -> dict:
    run_dir = args.out / f"{name}-s{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    sets = [f"seed={seed}", f"data.root={args.folder}", *args.set, *SETTINGS[name]]
    cmd = [sys.executable, "-m", "pipeline.cli", "-c", "photos", "-r", str(run_dir)]
    if args.cache_dir:  # settings that share a teacher then train it once per seed
        cmd += ["--cache-dir", str(args.cache_dir)]
    for s in sets:
        cmd += ["--set", s]
    log = run_dir / "log.txt"
    with open(log, "w") as fh:
        rc = subprocess.run([*cmd, "distill"], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                            env={**os.environ, "COLUMNS": "120"}).returncode
    row = {"setting": name, "seed": seed, "overrides": SETTINGS[name], "rc": rc}
    if rc != 0:
        row["log_tail"] = log.read_text()[-1500:]
        return row
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    t, d = stages["teacher"]["metrics"], stages["distill"]["metrics"]
    row.update(teacher_val=t["val_top1"], teacher_test=t["test_top1"],
               adapted_teacher_test=d.get("adapted_teacher_top1"),
               alone_val=d["baseline_val_top1"], alone_test=d["baseline_top1"],
               distilled_val=d["val_top1"], distilled_test=d["test_top1"],
               seconds={k: v["seconds"] for k, v in stages.items()})
    return row


def mean(rows: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def table(rows: list[dict]) -> str:
    out = ["| setting | seeds | teacher val | teacher test | alone val | alone test | distilled val | "
           "distilled test | distilled - alone, test (per seed) | teacher s | distill s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["setting"] for r in rows):
        ok = [r for r in rows if r["setting"] == name and r["rc"] == 0]
        if not ok:
            out.append(f"| {name} | failed | | | | | | | | | |")
            continue
        gains = [100 * (r["distilled_test"] - r["alone_test"]) for r in ok]
        per = ", ".join(f"{g:+.2f}" for g in gains)
        out.append(
            f"| {name} | {len(ok)} | {100 * mean(ok, 'teacher_val'):.2f} | {100 * mean(ok, 'teacher_test'):.2f} | "
            f"{100 * mean(ok, 'alone_val'):.2f} | {100 * mean(ok, 'alone_test'):.2f} | "
            f"{100 * mean(ok, 'distilled_val'):.2f} | {100 * mean(ok, 'distilled_test'):.2f} | "
            f"{statistics.fmean(gains):+.2f} ({per}) | "
            f"{statistics.fmean(r['seconds']['teacher'] for r in ok):.0f} | "
            f"{statistics.fmean(r['seconds']['distill'] for r in ok):.0f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--set", action="append", default=[], help="extra override for every run")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="one run-cache for every run (use with --jobs 1: a stage is then trained once)")
    args = parser.parse_args()
    args.folder, args.out = args.folder.resolve(), args.out.resolve()
    args.cache_dir = args.cache_dir.resolve() if args.cache_dir else None
    jobs = [(name, seed) for seed in args.seeds for name in args.only]
    machine = f"{cpu_model()}, {os.cpu_count()} logical CPUs"
    try:
        import torch

        if torch.cuda.is_available():
            machine += f", GPU {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    except ImportError:
        pass
    rows: list[dict] = []
    with ThreadPoolExecutor(args.jobs) as pool:  # results are rewritten as each run ends: a stop loses nothing
        for row in as_completed([pool.submit(run_one, *job, args) for job in jobs]):
            rows.append(row.result())
            rows.sort(key=lambda r: (args.only.index(r["setting"]), r["seed"]))
            (args.out / "results.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
            md = f"machine: {machine}\n\ncommand: {' '.join(sys.argv)}\n\n{table(rows)}\n"
            (args.out / "results.md").write_text(md)
    print(md)
    for r in rows:
        if r["rc"] != 0:
            print(f"FAILED {r['setting']} seed {r['seed']}:\n{r['log_tail']}")


if __name__ == "__main__":
    main()
