"""``compress compare``: every configured method x N seeds on the same student budget, then one table.

A method entry is a method name or a variant of it with ``distill`` overrides in parentheses, e.g.
``ama(kd_target=original,hint_weight=0.3)``; each entry is its own row. Each (entry, seed) run keeps its result in
compare/<entry>/seed<k>/result.json, keyed by a fingerprint of what it depends on (the distill stage's code among
it), so an interrupted comparison resumes where it stopped and a finished one is free to rerun.

Every method of a seed starts from the same initial weights and sees the same data order, so methods are compared
by paired t-tests on the per-seed differences, beside Welch's test; choices read validation, reports test top-1.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from pathlib import Path

from pipeline.errors import UserError
from pipeline.files import atomic_json, atomic_write, sha256

FIELDS = ("test_top1", "val_top1", "test_loss", "final_train_loss", "train_top1", "seconds_per_epoch",
          "cache_seconds")
REFERENCES = ("student", "kd")  # rows every method is paired against, where they were run


def parse_entry(entry: str) -> tuple[str, dict]:
    """``ama(kd_target=original,hint_weight=0.3)`` -> ``("ama", {"kd_target": "original", "hint_weight": 0.3})``."""
    import yaml

    m = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*(?:\((.*)\))?\s*", entry)
    if not m:
        raise UserError(f"compare.methods entry '{entry}' must look like ama or ama(key=value,key=value)")
    overrides = {}
    for part in filter(None, (p.strip() for p in (m.group(2) or "").split(","))):
        if "=" not in part:
            raise UserError(f"compare.methods entry '{entry}': '{part}' must look like key=value (distill keys)")
        key, raw = (t.strip() for t in part.split("=", 1))
        overrides[key] = yaml.safe_load(raw)
    return m.group(1), overrides


def entry_config(cfg, entry: str):
    """The config one entry trains with: ``cfg`` with the entry's distill overrides (checked like --set)."""
    from pipeline import config as config_mod
    from pipeline.distill import methods as distillers

    name, overrides = parse_entry(entry)
    distillers.check(name)
    if overrides:
        cfg = config_mod.from_dict({**cfg.to_dict(), "distill": {**cfg.to_dict()["distill"], **overrides}})
    return name, cfg


def folder_name(entry: str) -> str:
    name, overrides = parse_entry(entry)
    return name + "".join(f"_{k}={v}" for k, v in overrides.items()).replace("/", "-").replace(" ", "")


def _fingerprint(cfg, entry: str, method: str, seed: int, root: Path, code: str) -> str:
    """What one run depends on: ``code``, the distill stage's code (a run trains what that stage trains), and
    the settings and inputs of this method: the student alone needs no teacher, the other methods no adapted
    module except ama."""
    from pipeline.distill import methods as distillers
    from pipeline.files import section_hash

    side = distillers.needs(method)
    inputs = {None: [], "teacher": ["teacher/model.pt"], "adapted": ["teacher/model.pt", "adapt/adapted.pt"]}[side]
    sections = {s: section_hash(getattr(cfg, s)) for s in ("data", "student", "device")}
    sections["distill"] = section_hash(cfg.distill if side else {"augment": cfg.distill.augment})
    if side == "adapted":
        sections["adapt"] = section_hash(cfg.adapt)
    payload = {"method": entry, "seed": seed, "split_seed": cfg.seed, "code": code, **sections,
               "inputs": [sha256(root / p) for p in inputs if (root / p).exists()]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def run(cfg, run_dir, console) -> dict:
    """Train what is missing, then write compare.json, compare.md and the PNGs; returns the summary."""
    if "student" not in cfg.compare.methods:
        raise UserError("compare.methods must include 'student' (the baseline every method is measured against)")
    return report(cfg, run_dir, console, train_all(cfg, run_dir, console, list(cfg.compare.methods)))


def report(cfg, run_dir, console, results: dict[str, list[dict]]) -> dict:
    """Write compare.json, compare.md and compare.png for ``results``; returns the summary."""
    summary = summarize(results, cfg.compare.target_top1)
    out = run_dir.stage_dir("compare")
    atomic_json(out / "compare.json", {"target_top1": cfg.compare.target_top1, "methods": summary,
                                       "runs": results})
    atomic_write(out / "compare.md", to_markdown(summary, cfg))
    plots(results, summary, out)
    console.print(to_markdown(summary, cfg), highlight=False, markup=False)
    return summary


def train_all(cfg, run_dir, console, methods: list[str], train: bool = True,
              only: int | None = None) -> dict[str, list[dict]]:
    """Every entry of ``methods`` x ``compare.seeds`` seeds (finished runs are read back); {entry: [result]}.
    With ``train=False`` runs that are not finished are left out instead of trained; ``only=k`` keeps seed index k
    alone (one process per seed, as benchmarks/ama_study.py --split runs them)."""
    from pipeline import data
    from pipeline.distill import methods as distillers
    from pipeline.distill.loading import load_adapted_for, load_teacher
    from pipeline.distill.train import epochs_to, train_student
    from pipeline.run import runner as runner_mod

    entries = {e: entry_config(cfg, e) for e in methods}
    if cfg.compare.seeds < 1:
        raise UserError(f"compare.seeds must be at least 1, got {cfg.compare.seeds}")
    sides = {distillers.needs(name) for name, _ in entries.values()}
    runner = runner_mod.Runner(cfg, run_dir, console)
    runner.run_all(runner.select(to="adapt" if "adapted" in sides else "teacher"))
    code = runner.code_hash("distill")
    ds = data.load(cfg.data, cfg.seed)
    root = run_dir.root
    teacher = load_teacher(root / "teacher" / "model.pt", cfg, ds) if sides - {None} else None
    adapted = load_adapted_for(root / "adapt" / "adapted.pt", cfg, teacher, ds) if "adapted" in sides else None
    out = run_dir.stage_dir("compare")
    results: dict[str, list[dict]] = {e: [] for e in entries}
    for k in range(cfg.compare.seeds) if only is None else [only]:  # seeds outermost: a partial run still pairs
        seed = cfg.seed + k
        for entry, (method, ecfg) in entries.items():
            folder = out / folder_name(entry) / f"seed{seed}"
            fp = _fingerprint(ecfg, entry, method, seed, root, code)
            done = folder / "result.json"
            if done.exists() and json.loads(done.read_text()).get("fingerprint") == fp:
                results[entry].append(json.loads(done.read_text()))
                continue
            if not train:
                continue
            console.rule(f"[bold]compare: {entry}, seed {seed}")
            r = train_student(ecfg, method, seed, ds, teacher, adapted, folder, fingerprint=fp, console=console,
                              label=f"{entry} s{seed}")
            r = {k2: v for k2, v in r.items() if k2 not in ("model", "teacher_logits")}
            r.update(fingerprint=fp, epochs_to_target=epochs_to(r["history"], cfg.compare.target_top1))
            atomic_json(done, r)
            results[entry].append(r)
    return results


def _mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample std; one value has no spread (None, not 0), so tables and plots show none."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _p(value: float) -> float | None:
    return None if math.isnan(value) else value


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch t-test p-value; None where it is undefined (fewer than two runs, or no variance)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    return _p(float(stats.ttest_ind(a, b, equal_var=False).pvalue))


def paired_p(diffs: list[float]) -> float | None:
    """Two-sided paired t-test p-value on per-seed differences (H0: mean difference 0); None where undefined
    (fewer than two pairs, or every difference the same)."""
    from scipy import stats

    if len(diffs) < 2 or max(diffs) == min(diffs):
        return None
    return _p(float(stats.ttest_1samp(diffs, 0.0).pvalue))


def paired(runs: list[dict], ref: list[dict], key: str = "test_top1") -> dict:
    """Per-seed differences ``runs - ref`` on the seeds both have, their mean and both p-values."""
    by_seed = {r["seed"]: r[key] for r in ref}
    diffs = [r[key] - by_seed[r["seed"]] for r in runs if r["seed"] in by_seed]
    return {"seeds": [r["seed"] for r in runs if r["seed"] in by_seed], "diffs": diffs,
            "mean_diff": statistics.fmean(diffs) if diffs else None, "paired_p": paired_p(diffs),
            "welch_p": welch_p([r[key] for r in runs], [r[key] for r in ref])}


def summarize(results: dict[str, list[dict]], target: float) -> dict:
    base = results["student"]
    base_acc = statistics.fmean(r["test_top1"] for r in base)
    base_loss = statistics.fmean(r["final_train_loss"] for r in base)
    base_sec = statistics.fmean(r["seconds_per_epoch"] for r in base)
    summary = {}
    for m, rs in results.items():
        if not rs:
            continue
        reached = [r["epochs_to_target"] for r in rs if r["epochs_to_target"] is not None]
        row = {"runs": len(rs), "seeds": [r["seed"] for r in rs]}
        for f in FIELDS:
            row[f], row[f + "_std"] = _mean_std([r.get(f) for r in rs])
        vs = {} if m == "student" else {ref: paired(rs, results[ref]) for ref in REFERENCES
                                        if results.get(ref) and ref != m}
        row.update(delta_top1=row["test_top1"] - base_acc, vs=vs,
                   p_value=vs["student"]["welch_p"] if "student" in vs else None,
                   paired_p=vs["student"]["paired_p"] if "student" in vs else None,
                   loss_change=(row["final_train_loss"] - base_loss) / base_loss,
                   epochs_to_target=statistics.fmean(reached) if reached else None,
                   reached_target=len(reached), epoch_cost=row["seconds_per_epoch"] / base_sec)
        summary[m] = row
    return summary


def _pct(value, std=None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def _pv(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def to_markdown(summary: dict, cfg) -> str:
    target = cfg.compare.target_top1
    seeds = sorted({s for r in summary.values() for s in r["seeds"]})  # those with results, not those configured
    lines = [f"Student {cfg.student.arch} (width {cfg.student.width}), {cfg.student.epochs} epochs, "
             f"data {cfg.data.dataset} (validation fraction {cfg.data.val_fraction}), "
             f"seeds {', '.join(map(str, seeds))}.", "",
             "| method | runs | val top-1 % | test top-1 % (mean ± std) | Δ test vs student (pts) | paired p | "
             f"Welch p "
             f"| train CE | Δ train CE | epochs to {target:.0%} (val) | s / epoch | epoch cost vs student |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, r in summary.items():
        ep = "not reached" if r["epochs_to_target"] is None else \
            f"{r['epochs_to_target']:.1f} ({r['reached_target']}/{r['runs']})"
        lines.append(f"| {m} | {r['runs']} | {_pct(r['val_top1'], r['val_top1_std'])} | "
                     f"{_pct(r['test_top1'], r['test_top1_std'])} | {100 * r['delta_top1']:+.2f} | "
                     f"{_pv(r['paired_p'])} | {_pv(r['p_value'])} | {r['final_train_loss']:.4f} | "
                     f"{100 * r['loss_change']:+.1f}% | {ep} | {r['seconds_per_epoch']:.1f} | "
                     f"{r['epoch_cost']:.2f}x |")
    lines += ["", "Per-seed differences in test top-1 (points; each seed gives both methods the same initial "
              "weights and data order):", "",
              "| method | vs | seeds | differences | mean | paired p | Welch p |", "|---|---|---|---|---|---|---|"]
    for m, r in summary.items():
        for ref, v in r["vs"].items():
            diffs = " / ".join(f"{100 * d:+.2f}" for d in v["diffs"])
            mean = "-" if v["mean_diff"] is None else f"{100 * v['mean_diff']:+.2f}"
            lines.append(f"| {m} | {ref} | {len(v['diffs'])} | {diffs} | {mean} | {_pv(v['paired_p'])} | "
                         f"{_pv(v['welch_p'])} |")
    ama = {m: r for m, r in summary.items() if m.startswith("ama") and r["val_top1"] is not None}
    if ama:  # a one-seed screen is not set against a five-seed mean: only the readings with the most seeds
        most = max(r["runs"] for r in ama.values())
        best = max((m for m in ama if ama[m]["runs"] == most), key=lambda m: ama[m]["val_top1"])
        lines += ["", f"Highest mean validation top-1 among the ama readings with {most} seed(s): **{best}** "
                      f"({_pct(ama[best]['val_top1'])}%)."]
    lines += ["", "Train CE: the student's plain cross-entropy on the training set after training (the same measure "
              "for every method). s / epoch excludes the one-off teacher cache (cache_seconds in compare.json). "
              "Test top-1 is measured once per run, on the final model; every choice uses validation top-1."]
    return "\n".join(lines) + "\n"


def bar_label(row: dict) -> str:
    """The figure beside a method's bar: mean ± std and the number of seeds, flagged where one seed has no spread."""
    spread = "1 seed, no spread" if row["runs"] == 1 else f"n={row['runs']}"
    return f"{_pct(row['test_top1'], row['test_top1_std'])}  ({spread})"


def plots(results: dict[str, list[dict]], summary: dict, out: Path) -> list[Path]:
    from pipeline.files import atomic_path
    from pipeline.report.plots import pyplot, whole_epochs

    plt = pyplot()
    names = list(summary)
    fig, (ax_bar, ax_curve) = plt.subplots(1, 2, figsize=(12, max(3.5, 0.5 * len(names) + 1.8)),
                                           gridspec_kw={"width_ratios": [1.2, 1]})
    ys = range(len(names))[::-1]  # first method on top, as in the table
    accs = [100 * summary[m]["test_top1"] for m in names]
    stds = [100 * (summary[m]["test_top1_std"] or 0) for m in names]
    one = [summary[m]["runs"] == 1 for m in names]
    ax_bar.barh(ys, accs, xerr=stds, capsize=3, color=["0.8" if o else "tab:blue" for o in one],
                edgecolor=["0.4" if o else "tab:blue" for o in one])
    for y, acc, std, m in zip(ys, accs, stds, names):
        ax_bar.text(acc + std + 0.05, y, bar_label(summary[m]), va="center", fontsize=8)
    # long method names (ama(kd_target=...,...)) break after the opening parenthesis and each comma
    labels = [m.replace("(", "(\n", 1).replace(",", ",\n") if len(m) > 24 else m for m in names]
    ax_bar.set_yticks(list(ys), labels, fontsize=8)
    lo, hi = min(a - s for a, s in zip(accs, stds)), max(a + s for a, s in zip(accs, stds))
    ax_bar.set(xlim=(max(0, lo - 1), hi + 0.35 * (hi - lo + 2)), xlabel="test accuracy (%)",
               title="test accuracy, mean ± std over seeds (grey: one seed)")
    for m, rs in results.items():
        if not rs or "val_top1" not in rs[0]["history"][0]:
            continue
        epochs = [h["epoch"] for h in rs[0]["history"]]
        mean = [100 * statistics.fmean(r["history"][i]["val_top1"] for r in rs) for i in range(len(epochs))]
        ax_curve.plot(epochs, mean, marker="o", ls="--" if len(rs) == 1 else "-", label=f"{m} (n={len(rs)})")
    ax_curve.set(xlabel="epoch", ylabel="validation accuracy (%)", title="mean validation accuracy per epoch")
    ax_curve.legend(fontsize=7)
    whole_epochs(ax_curve)
    for ax in (ax_bar, ax_curve):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "compare.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return [path]
