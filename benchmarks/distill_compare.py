"""The paper's four claims, checked on `compress compare` (every method x seeds, same budget, one run).

    .venv/bin/python benchmarks/distill_compare.py [-c default] [--run-dir runs/default] [--report-only]

Runs (or resumes: finished (method, seed) runs are reused) `compress compare` for the config, then prints the
comparison table and, for the adaptive-module student ('ama'), each claim of Wu et al. (2020) with the figure
measured here against the student alone trained in the same run. --report-only reads compare.json as it is.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from rich.console import Console


def _p(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def claims(summary: dict, name: str = "ama") -> list[tuple[str, str, bool]]:
    """Each claim of the paper for the row ``name`` (an `ama` reading), with the figure and whether it holds."""
    ama, base = summary[name], summary["student"]
    rows = [("test accuracy >= student alone + 0.6 pts", f"{100 * ama['delta_top1']:+.2f} pts "
             f"(paired p={_p(ama['paired_p'])}, Welch p={_p(ama['p_value'])}, {ama['runs']} seeds)",
             ama["delta_top1"] >= 0.006)]
    for other in ("kd", "fitnets"):
        vs = ama["vs"].get(other) if other in summary else None
        if vs and vs["mean_diff"] is not None:
            rows.append((f"beats {other} (paired p < 0.05)", f"{100 * vs['mean_diff']:+.2f} pts "
                         f"(paired p={_p(vs['paired_p'])})", vs["mean_diff"] > 0 and (vs["paired_p"] or 1) < 0.05))
    rows.append(("final training loss >= 6.5% lower", f"{100 * ama['loss_change']:+.1f}%",
                 ama["loss_change"] <= -0.065))
    e_a, e_b = ama["epochs_to_target"], base["epochs_to_target"]
    fewer = e_a is not None and (e_b is None or e_a < e_b)
    rows.append(("reaches the target accuracy in fewer epochs", f"{e_a} vs {e_b} (mean epoch, runs that reached)",
                 fewer))
    rows.append(("distillation epoch <= 1.5x a plain epoch", f"{ama['epoch_cost']:.2f}x", ama["epoch_cost"] <= 1.5))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default="default")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    from pipeline import compare, config
    from pipeline.run.rundir import RunDir

    cfg = config.load(args.config)
    run = RunDir(args.run_dir or Path("runs") / Path(args.config).stem)
    if args.report_only:
        summary = json.loads((run.root / "compare" / "compare.json").read_text())["methods"]
    else:
        with run.locked():
            summary = compare.run(cfg, run, Console())
    print(f"\nmachine: {platform.machine()} {platform.processor()}, config {args.config}\n")
    print(compare.to_markdown(summary, cfg))
    for name in (m for m in summary if m.startswith("ama")):
        print(f"\n| claim (Wu et al., 2020), {name} | measured | holds |\n|---|---|---|")
        for claim, measured, ok in claims(summary, name):
            print(f"| {claim} | {measured} | {'yes' if ok else 'no'} |")


if __name__ == "__main__":
    main()
