"""One picture of issue #9's question across settings: an `ama` reading minus Hinton KD, test top-1, per seed.

    .venv/bin/python benchmarks/ama_vs_kd.py --out benchmarks/results/ama_vs_kd.png \
        "default budget, 10 seeds=/work/study/cpu-default/all/compare/compare.json" \
        "stronger teacher, hint 2.0="
        "/work/study/cpu-study/all/compare/compare.json:ama(kd_target=original,hint_weight=2.0)"

Each argument is LABEL=COMPARE_JSON[:METHOD] (METHOD defaults to `ama(kd_target=original)`); the file is the
compare.json that `compress compare` (or `ama_study.py --report-only`) writes. Runs pair by seed, as in the
comparison table. Prints one line per setting (differences, mean, 95% interval, paired p) and draws the same as
a dot plot: one row per setting, a dot per seed, the mean with its 95% t-interval.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT = "ama(kd_target=original)"


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def row(spec: str) -> dict:
    from scipy import stats

    from pipeline import compare

    label, _, rest = spec.partition("=")
    path, _, method = rest.partition(".json:")
    path = path if path.endswith(".json") else path + ".json"
    if not Path(path).is_file():
        fail(f"{path}: no such file; give LABEL=ROOT/compare/compare.json[:METHOD]")
    runs = json.loads(Path(path).read_text())["runs"]
    method = method or DEFAULT
    for name in (method, "kd"):
        if not runs.get(name):
            fail(f"{path}: no runs of '{name}' (it has {', '.join(runs)})")
    p = compare.paired(runs[method], runs["kd"])
    if len(p["diffs"]) < 2:
        fail(f"{path}: '{method}' and kd share {len(p['diffs'])} seed(s); an interval needs at least 2")
    diffs = [100 * d for d in p["diffs"]]
    mean = statistics.fmean(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return {"label": label, "method": method, "diffs": diffs, "mean": mean, "ci": (mean - half, mean + half),
            "p": "-" if p["paired_p"] is None else f"{p['paired_p']:.3f}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("settings", nargs="+", help="LABEL=COMPARE_JSON[:METHOD]")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = [row(s) for s in args.settings]
    for r in rows:
        print(f"{r['label']}: {r['method']} - kd = {r['mean']:+.2f} pts "
              f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}], paired p = {r['p']}; "
              f"per seed {' / '.join(f'{d:+.2f}' for d in r['diffs'])}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.4))
    for y, r in enumerate(reversed(rows)):
        ax.scatter(r["diffs"], [y] * len(r["diffs"]), s=14, color="0.55", zorder=2)
        ax.errorbar(r["mean"], y, xerr=[[r["mean"] - r["ci"][0]], [r["ci"][1] - r["mean"]]], fmt="o",
                    color="C0", capsize=3, zorder=3)
        ax.text(1.01, y, f"{r['mean']:+.2f} (p={r['p']})", transform=ax.get_yaxis_transform(), va="center",
                fontsize=8)
    ax.axvline(0, color="k", lw=0.8, ls="--")
    ax.set_yticks(range(len(rows)), [f"{r['label']} (n={len(r['diffs'])})" for r in reversed(rows)], fontsize=8)
    ax.set_xlabel("test top-1 minus Hinton KD, same seed (points); dots: seeds; blue: mean, 95% interval",
                  fontsize=8)
    ax.set_title("Does the adaptive module's hint beat KD?", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130, bbox_inches="tight")  # the p-values sit outside the axes
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
