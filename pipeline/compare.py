"""``compress compare``: every configured method x N seeds on the same student budget, then one table.

Each (method, seed) run keeps its result in compare/<method>/seed<k>/result.json, keyed by a fingerprint of
what it depends on, so an interrupted comparison resumes where it stopped and a finished one is free to rerun.
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path

from pipeline.errors import UserError
from pipeline.store import atomic_json, atomic_write, sha256

FIELDS = ("test_top1", "test_loss", "final_train_loss", "train_top1", "seconds_per_epoch", "cache_seconds")


def _fingerprint(cfg, method: str, seed: int, inputs: list[Path]) -> str:
    from pipeline.config import section_hash

    payload = {"method": method, "seed": seed, "inputs": [sha256(p) for p in inputs if p.exists()],
               **{s: section_hash(getattr(cfg, s)) for s in ("data", "student", "adapt", "distill", "device")}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def run(cfg, run_dir, console) -> dict:
    """Train what is missing, then write compare.json, compare.md and the PNGs; returns the summary."""
    from pipeline import data, distillers, runner as runner_mod
    from pipeline.distillers.train import epochs_to, load_adapted_for, load_teacher, train_student

    methods = list(cfg.compare.methods)
    for m in methods:
        distillers.check(m)
    if "student" not in methods:
        raise UserError("compare.methods must include 'student' (the baseline every method is measured against)")
    if cfg.compare.seeds < 1:
        raise UserError(f"compare.seeds must be at least 1, got {cfg.compare.seeds}")
    runner = runner_mod.Runner(cfg, run_dir, console)
    needs_adapt = any(distillers.needs(m) == "adapted" for m in methods)
    runner.run_all(runner.select(to="adapt" if needs_adapt else "teacher"))
    ds = data.load(cfg.data, cfg.seed)
    inputs = [run_dir.root / "teacher" / "model.pt", run_dir.root / "adapt" / "adapted.pt"]
    teacher = load_teacher(inputs[0], cfg, ds)
    adapted = load_adapted_for(inputs[1], cfg, teacher, ds) if needs_adapt else None
    out = run_dir.stage_dir("compare")
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for k in range(cfg.compare.seeds):  # seeds outermost: a partial comparison still covers every method
        seed = cfg.seed + k
        for m in methods:
            folder = out / m / f"seed{seed}"
            fp = _fingerprint(cfg, m, seed, inputs)
            done = folder / "result.json"
            if done.exists() and json.loads(done.read_text()).get("fingerprint") == fp:
                results[m].append(json.loads(done.read_text()))
                continue
            console.rule(f"[bold]compare: {m}, seed {seed}")
            r = train_student(cfg, m, seed, ds, teacher, adapted, folder, fingerprint=fp, console=console,
                              label=f"{m} s{seed}")
            r = {k2: v for k2, v in r.items() if k2 != "model"}
            r.update(fingerprint=fp, epochs_to_target=epochs_to(r["history"], cfg.compare.target_top1))
            atomic_json(done, r)
            results[m].append(r)
    summary = summarize(results, cfg.compare.target_top1)
    atomic_json(out / "compare.json", {"target_top1": cfg.compare.target_top1, "methods": summary,
                                       "runs": results})
    atomic_write(out / "compare.md", to_markdown(summary, cfg))
    plots(results, summary, out)
    console.print(to_markdown(summary, cfg), highlight=False)
    return summary


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch t-test p-value; None where it is undefined (fewer than two runs, or no variance)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def summarize(results: dict[str, list[dict]], target: float) -> dict:
    base = results["student"]
    base_acc = [r["test_top1"] for r in base]
    base_loss = statistics.fmean(r["final_train_loss"] for r in base)
    base_sec = statistics.fmean(r["seconds_per_epoch"] for r in base)
    summary = {}
    for m, rs in results.items():
        acc = [r["test_top1"] for r in rs]
        reached = [r["epochs_to_target"] for r in rs if r["epochs_to_target"] is not None]
        row = {"runs": len(rs)}
        for f in FIELDS:
            row[f], row[f + "_std"] = _mean_std([r[f] for r in rs])
        row.update(delta_top1=row["test_top1"] - statistics.fmean(base_acc),
                   p_value=welch_p(acc, base_acc) if m != "student" else None,
                   loss_change=(row["final_train_loss"] - base_loss) / base_loss,
                   epochs_to_target=statistics.fmean(reached) if reached else None,
                   reached_target=len(reached), epoch_cost=row["seconds_per_epoch"] / base_sec)
        summary[m] = row
    return summary


def to_markdown(summary: dict, cfg) -> str:
    target = cfg.compare.target_top1
    lines = [f"Student {cfg.student.arch} (width {cfg.student.width}), {cfg.student.epochs} epochs, "
             f"data {cfg.data.dataset}, seeds {cfg.seed}..{cfg.seed + cfg.compare.seeds - 1}.", "",
             f"| method | test top-1 % (mean ± std) | Δ vs student (pts) | Welch p | train CE | Δ train CE "
             f"| epochs to {target:.0%} | s / epoch | epoch cost vs student |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, r in summary.items():
        p = "-" if r["p_value"] is None else f"{r['p_value']:.3f}"
        ep = "not reached" if r["epochs_to_target"] is None else \
            f"{r['epochs_to_target']:.1f} ({r['reached_target']}/{r['runs']})"
        lines.append(f"| {m} | {100 * r['test_top1']:.2f} ± {100 * r['test_top1_std']:.2f} | "
                     f"{100 * r['delta_top1']:+.2f} | {p} | {r['final_train_loss']:.4f} | "
                     f"{100 * r['loss_change']:+.1f}% | {ep} | {r['seconds_per_epoch']:.1f} | "
                     f"{r['epoch_cost']:.2f}x |")
    lines += ["", "Train CE: the student's plain cross-entropy on the training set after training (the same measure "
              "for every method). s / epoch excludes the one-off teacher cache (cache_seconds in compare.json)."]
    return "\n".join(lines) + "\n"


def plots(results: dict[str, list[dict]], summary: dict, out: Path) -> list[Path]:
    from pipeline.plots import _pyplot
    from pipeline.store import atomic_path

    plt = _pyplot()
    fig, (ax_bar, ax_curve) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(summary)
    ax_bar.bar(names, [100 * summary[m]["test_top1"] for m in names],
               yerr=[100 * summary[m]["test_top1_std"] for m in names], capsize=4, color="tab:blue")
    lo = min(100 * (summary[m]["test_top1"] - summary[m]["test_top1_std"]) for m in names)
    ax_bar.set(ylim=(max(0, lo - 2), None), ylabel="test accuracy (%)", title="test accuracy, mean ± std")
    for m, rs in results.items():
        epochs = [h["epoch"] for h in rs[0]["history"]]
        mean = [100 * statistics.fmean(r["history"][i]["test_top1"] for r in rs) for i in range(len(epochs))]
        ax_curve.plot(epochs, mean, marker="o", label=m)
    ax_curve.set(xlabel="epoch", ylabel="test accuracy (%)", title="mean test accuracy per epoch")
    ax_curve.legend()
    for ax in (ax_bar, ax_curve):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "compare.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return [path]
