"""The adaptive-module study (issue #9): every reading of `ama` against student, kd, fitnets and at, 5 seeds.

    .venv/bin/python benchmarks/ama_study.py --root /work/study/default -c default [--seeds 5] [--jobs 2]
    .venv/bin/python benchmarks/ama_study.py --root /work/study/study -c study --report-only [--seeds-from 5]
    python3 benchmarks/ama_study.py --root /tmp/long -c study --only 0 --only 16 --split --jobs 10   (a GPU)

Trains the teacher and the adaptive module once (ROOT/base), then runs the groups below in parallel processes,
each in its own copy of the base run (ROOT/g<k>), through `compress compare`'s own training (compare.train_all),
so every run is resumable and keyed by the same fingerprint. Groups that change adapt.* retrain the module in
their copy. Finally the runs that share the base module are gathered into ROOT/all and tabled with
`compress compare`'s table (ROOT/all/compare/compare.md); each adapt.* group gets its own table beside its runs.
Nothing is trained twice: the student alone runs once and is copied where a table needs it. With --split every
(entry, seed) is its own process, for a GPU that many processes share (benchmarks/ama_study_gpu.sh).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ORIG = "kd_target=original"
# (adapt overrides, compare entries); entries are `compress compare` method entries
GROUPS: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    ((), ("student", f"ama({ORIG})")),  # pairs first, seeds outermost: a stopped study still pairs its seeds
    ((), ("kd", "ama")),
    ((), ("fitnets",)),
    ((), ("at",)),
    ((), ("ama(joint=true)",)),
    ((), (f"ama({ORIG},joint=true)",)),
    ((), (f"ama({ORIG},hint_loss=smooth_l1)",)),
    ((), (f"ama({ORIG},hint_weight=0.05)",)),
    ((), (f"ama({ORIG},hint_weight=0.3)",)),
    ((), (f"ama({ORIG},hint_weight=0.5)",)),
    (("adapt.stages=[0]",), (f"ama({ORIG})",)),
    (("adapt.stages=[2]",), (f"ama({ORIG})",)),
    (("adapt.stages=[1,2]",), (f"ama({ORIG})",)),
    ((), (f"ama({ORIG},hint_weight=1.0)",)),  # 13-14: the hint weight past 0.5, under the stronger teacher
    ((), (f"ama({ORIG},hint_weight=2.0)",)),
    ((), (f"ama({ORIG},route_weight=1.0)",)),  # 15: the student's map routed through the rest of the teacher
    ((), ("student", "kd")),  # 16: the two baselines alone, for a new root that tables one reading against them
    ((), (f"ama({ORIG},route_weight=0.5)",)),  # 17-20: the routed reading's weight, and the route without hints
    ((), (f"ama({ORIG},route_weight=2.0)",)),
    ((), (f"ama({ORIG},route_weight=1.0,hint_weight=0.0)",)),
    ((), (f"ama({ORIG},route_weight=4.0)",)),
    (("adapt.epochs=10",), ("ama(kd_target=adapted)", f"ama({ORIG})")),  # 21: a module trained 5x longer
]


def _sets(items) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _methods(entries) -> str:
    return "compare.methods=[" + ",".join(f'"{e}"' for e in entries) + "]"


def _load(args, extra=()):
    from pipeline import config

    return config.load(args.config, [*args.set, f"compare.seeds={args.seeds}", *extra])


def _copy_run(src: Path, dst: Path) -> None:
    """A run folder without its comparison runs (teacher, adapt, manifest, config)."""
    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=lambda d, names: {"compare", ".lock"} & set(names))


def worker(args) -> None:
    from rich.console import Console

    from pipeline import compare
    from pipeline.run.rundir import RunDir

    adapt, entries = GROUPS[args.group]
    if args.entry is not None:
        entries = entries[args.entry:args.entry + 1]
    compare.train_all(_load(args, adapt), RunDir(args.root / f"g{args.group}"), Console(), list(entries),
                      only=args.seed_index)


def _spawn(args, job: tuple, log: Path) -> subprocess.Popen:
    k, *split = job
    cmd = [sys.executable, __file__, "--root", str(args.root), "-c", args.config, "--seeds", str(args.seeds),
           "--group", str(k), *_sets(args.set)]
    if split:  # one entry of the group, one seed
        cmd += ["--entry", str(split[0]), "--seed-index", str(split[1])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def _checked_base(args):
    """The base run's Runner; stops with one line if its teacher or module finished with other code or settings,
    since every finished run of the study hangs on those files and retraining them would replace them."""
    from rich.console import Console

    from pipeline.run import runner as runner_mod
    from pipeline.run.rundir import RunDir

    base = RunDir(args.root / "base")
    r = runner_mod.Runner(_load(args), base, Console())
    states = r.states(base.manifest())
    stale = [name for name in ("teacher", "adapt") if states[name] == "stale"]
    if stale and not args.rebuild_base:
        print(f"{base.root}: {' and '.join(stale)} finished with other code or settings; run the study with the "
              "checkout that made them, or pass --rebuild-base to train them again (new runs then no longer pair "
              "with the old ones)", file=sys.stderr)
        sys.exit(2)
    return r


def run_groups(args) -> None:
    r = _checked_base(args)
    r.run_all(r.select(to="adapt"))
    base = r.run
    groups = list(args.only) if args.only else list(range(len(GROUPS)))  # in the order given
    for k in groups:
        _copy_run(base.root, args.root / f"g{k}")
    # --split: one process per (group, entry, seed), seeds outermost, so finished seeds pair early
    todo: list[tuple] = [(k, e, s) for s in range(args.seeds) for k in groups for e in range(len(GROUPS[k][1]))] \
        if args.split else [(k,) for k in groups]
    running: dict[tuple, tuple[subprocess.Popen, float]] = {}
    deadline = args.t0 + args.budget_s
    longest = 0.0  # the longest job so far: none is started that would end past the deadline
    while todo or running:
        while todo and len(running) < args.jobs and time.time() + longest < deadline:
            job = todo.pop(0)
            running[job] = _spawn(args, job, args.root / ("g" + "_".join(map(str, job)) + ".log")), time.time()
            print(f"started {job}: {GROUPS[job[0]]}", flush=True)
        for job, (p, t0) in list(running.items()):
            if p.poll() is not None:
                longest = max(longest, time.time() - t0)
                print(f"{job} finished with {p.returncode} after {time.time() - t0:.0f} s", flush=True)
                del running[job]
        if todo and time.time() + longest >= deadline:
            print(f"budget: {len(todo)} jobs not started", flush=True)
            todo.clear()
        time.sleep(2)


def gather(args) -> None:
    """Table every finished run: ROOT/all for the base module, ROOT/g<k> for each adapt.* group."""
    from rich.console import Console

    from pipeline import compare
    from pipeline.files import atomic_write
    from pipeline.run.rundir import RunDir

    console = Console()
    _checked_base(args)
    all_dir = args.root / "all"
    _copy_run(args.root / "base", all_dir)
    for k, (adapt, entries) in enumerate(GROUPS):
        src = args.root / f"g{k}" / "compare"
        for e in entries if not adapt and src.exists() else ():
            if (src / compare.folder_name(e)).exists():
                shutil.copytree(src / compare.folder_name(e), all_dir / "compare" / compare.folder_name(e),
                                dirs_exist_ok=True)
    base_rows = dict.fromkeys(e for a, es in GROUPS if not a for e in es if e != "student")  # kd: groups 1 and 16
    tables = [((), ["student", *base_rows], all_dir)]
    for k, (adapt, entries) in enumerate(GROUPS):
        if adapt and (args.root / f"g{k}" / "compare").exists():
            for ref in ("student", "kd"):  # neither uses the module: the base run's are this group's too
                if (all_dir / "compare" / ref).exists():
                    shutil.copytree(all_dir / "compare" / ref, args.root / f"g{k}" / "compare" / ref,
                                    dirs_exist_ok=True)
            tables.append((adapt, ["student", "kd", *entries], args.root / f"g{k}"))
    for adapt, entries, folder in tables:
        cfg = _load(args, [*adapt, _methods(entries)])
        results = compare.train_all(cfg, RunDir(folder), console, entries, train=False)
        results = {e: rs for e, rs in results.items() if rs}
        if "student" not in results:
            continue
        console.rule(f"{folder} {' '.join(adapt)}")
        summary = compare.report(cfg, RunDir(folder), console, results)
        atomic_write(folder / "compare" / "claims.md", claims_md(summary))
        console.print(claims_md(summary), highlight=False)
        if folder == all_dir and "kd" in results:
            text = "\n".join(epochs_md(results, name) for name in results
                             if name.startswith("ama") and len(results[name]) > 1)
            atomic_write(folder / "compare" / "epochs.md", text)
        if args.seeds_from and folder == all_dir:  # the later seeds alone: a fresh sample, tabled on their own
            later = {e: [r for r in rs if r["seed"] >= cfg.seed + args.seeds_from] for e, rs in results.items()}
            later = {e: rs for e, rs in later.items() if rs}
            if "student" in later:
                part = compare.summarize(later, cfg.compare.target_top1)
                text = compare.to_markdown(part, cfg) + claims_md(part)
                atomic_write(folder / "compare" / f"seeds_from_{args.seeds_from}.md", text)
                console.print(text, highlight=False)


def epochs_md(results: dict, name: str, ref: str = "kd") -> str:
    """Validation top-1 of ``name`` minus ``ref`` after every epoch, paired by seed: faster, if not better?"""
    from pipeline import compare

    out = [f"Validation top-1 after each epoch, {name} minus {ref}, paired by seed (one test per epoch, not "
           "corrected for the several epochs looked at):", "",
           "| epoch | seeds | differences (pts) | mean | paired p |", "|---|---|---|---|---|"]
    for e in range(len(results[name][0]["history"])):
        def at(runs):
            return [{"seed": r["seed"], "v": r["history"][e]["val_top1"]} for r in runs]
        p = compare.paired(at(results[name]), at(results[ref]), "v")
        diffs = " / ".join(f"{100 * d:+.2f}" for d in p["diffs"])
        pv = "-" if p["paired_p"] is None else f"{p['paired_p']:.3f}"
        out.append(f"| {e + 1} | {len(p['diffs'])} | {diffs} | {100 * p['mean_diff']:+.2f} | {pv} |")
    return "\n".join(out) + "\n"


def claims_md(summary: dict) -> str:
    """The paper's claims for every ama row of a table (benchmarks/distill_compare.py's checks)."""
    from distill_compare import claims

    out = []
    for name in (m for m in summary if m.startswith("ama")):
        out += ["", f"| claim (Wu et al., 2020), {name} | measured | holds |", "|---|---|---|"]
        out += [f"| {c} | {m} | {'yes' if ok else 'no'} |" for c, m, ok in claims(summary, name)]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("-c", "--config", default="default")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2, help="groups trained at once")
    ap.add_argument("--only", type=int, action="append", help="run only these group numbers")
    ap.add_argument("--budget-s", type=float, default=1e9,
                    help="start no job that would end (judged by the longest job so far) later than this many "
                    "seconds after the study started (teacher and module included)")
    ap.add_argument("--split", action="store_true", help="one process per entry and seed, not per group")
    ap.add_argument("--rebuild-base", action="store_true", help="retrain a teacher or module that is stale")
    ap.add_argument("--group", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--entry", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seed-index", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--report-only", action="store_true", help="only table what has finished")
    ap.add_argument("--seeds-from", type=int, default=0,
                    help="also table the runs of seeds K and later on their own (ROOT/all/compare/seeds_from_K.md)")
    args = ap.parse_args()
    args.t0 = time.time()
    bad = [k for k in args.only or () if not 0 <= k < len(GROUPS)]
    if bad:
        ap.exit(2, f"error: no group {bad[0]}; groups are 0-{len(GROUPS) - 1} (GROUPS in {Path(__file__).name})\n")
    sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # one thread per process unless told
    if args.group is not None:
        return worker(args)
    if not args.report_only:
        run_groups(args)
    gather(args)


if __name__ == "__main__":
    main()
