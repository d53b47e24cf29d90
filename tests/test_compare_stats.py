"""compare's statistics and method entries, on hand-made per-seed results (no training)."""
import pytest

from pipeline import compare, config
from pipeline.errors import UserError


def _runs(accs, loss=0.2):
    return [{"seed": s, "test_top1": a, "val_top1": a - 0.001, "test_loss": 0.3, "final_train_loss": loss,
             "train_top1": 0.95, "seconds_per_epoch": 10.0, "cache_seconds": 0.0,
             "epochs_to_target": 2 if a > 0.9 else None} for s, a in enumerate(accs)]


def test_paired_test_on_per_seed_differences_beside_welch():
    # seed effects dominate the spread, the method adds ~0.5 pts on every seed: paired sees it, Welch does not
    base = [0.900, 0.910, 0.920, 0.905, 0.915]
    ama = [b + d for b, d in zip(base, (0.005, 0.006, 0.004, 0.005, 0.006))]
    s = compare.summarize({"student": _runs(base), "ama": _runs(ama, loss=0.18)}, 0.9)
    vs = s["ama"]["vs"]["student"]
    assert vs["diffs"] == pytest.approx([0.005, 0.006, 0.004, 0.005, 0.006])
    assert vs["mean_diff"] == pytest.approx(0.0052)
    # scipy's ttest_rel gives the same; golden value: t = 0.0052 / (0.000837 / sqrt 5) = 13.9, df 4
    assert s["ama"]["paired_p"] == pytest.approx(1.56e-4, rel=0.02)
    assert s["ama"]["p_value"] > 0.3  # Welch on the two samples
    assert s["ama"]["loss_change"] == pytest.approx(-0.1)
    assert s["student"]["paired_p"] is None and s["student"]["delta_top1"] == 0.0


def test_pairs_only_the_seeds_both_have_and_kd_is_a_reference():
    s = compare.summarize({"student": _runs([0.90, 0.91, 0.92]), "kd": _runs([0.91, 0.92]),
                           "ama": _runs([0.915, 0.93, 0.94])}, 0.9)
    assert s["ama"]["vs"]["kd"]["seeds"] == [0, 1] and s["ama"]["vs"]["kd"]["diffs"] == pytest.approx([0.005, 0.01])
    assert s["kd"]["vs"]["student"]["seeds"] == [0, 1] and "kd" not in s["kd"]["vs"]
    assert compare.paired_p([0.01, 0.01]) is None  # no spread: undefined, not 0
    md = compare.to_markdown(s, config.load("smoke"))
    assert "| ama | kd | 2 | +0.50 / +1.00 |" in md and "paired p" in md
    assert "seeds 0, 1, 2." in md  # the seeds with results, whatever compare.seeds says


def test_plot_marks_a_one_seed_method_and_draws_every_method(tmp_path, monkeypatch):
    from pipeline.report.plots import pyplot

    plt, kept = pyplot(), []
    monkeypatch.setattr(plt, "close", kept.append)  # keep the figure to look at its curves
    runs = {"student": _runs([0.90, 0.91, 0.92]), "kd": _runs([0.915]),
            "ama(kd_target=original,route_weight=1.0)": _runs([0.92, 0.93, 0.925])}
    for rs in runs.values():
        for r in rs:
            r["history"] = [{"epoch": 1, "val_top1": 0.8}, {"epoch": 2, "val_top1": r["val_top1"]}]
    s = compare.summarize(runs, 0.9)
    assert compare.bar_label(s["kd"]) == "91.50  (1 seed, no spread)"
    assert compare.bar_label(s["student"]) == "91.00 ± 1.00  (n=3)"
    (path,) = compare.plots(runs, s, tmp_path)
    assert path.stat().st_size > 1000
    curves = kept[0].axes[1]
    assert len(curves.get_lines()) == 3
    assert [t for t in curves.get_xticks() if 1 <= t <= 2] == [1, 2]  # whole epochs, no 1.5
    monkeypatch.undo()
    plt.close(kept[0])


def test_table_gives_one_seed_no_spread_and_picks_the_best_reading_among_equal_seed_counts():
    s = compare.summarize({"student": _runs([0.90, 0.91, 0.92]), "ama": _runs([0.915, 0.925, 0.935]),
                           "ama(hint_weight=0.5)": _runs([0.95])}, 0.9)  # one lucky seed, above ama's mean
    md = compare.to_markdown(s, config.load("smoke"))
    row = next(line for line in md.splitlines() if line.startswith("| ama(hint_weight=0.5) |"))
    assert "| 95.00 |" in row and "±" not in row
    assert "among the ama readings with 3 seed(s): **ama** (92.40%)" in md


def test_method_entries_carry_distill_overrides():
    assert compare.parse_entry("ama(kd_target=original, hint_weight=0.3)") == \
        ("ama", {"kd_target": "original", "hint_weight": 0.3})
    assert compare.parse_entry("kd") == ("kd", {})
    cfg = config.load("smoke")
    name, ecfg = compare.entry_config(cfg, "ama(kd_target=adapted,hint_loss=smooth_l1)")
    assert name == "ama" and ecfg.distill.kd_target == "adapted" and ecfg.distill.hint_loss == "smooth_l1"
    assert ecfg.student == cfg.student and cfg.distill.kd_target == "original"
    assert compare.folder_name("ama(kd_target=original)") == "ama_kd_target=original"
    with pytest.raises(UserError, match="did you mean 'distill.hint_weight'"):
        compare.entry_config(cfg, "ama(hint_wieght=0.3)")
    with pytest.raises(UserError, match="did you mean 'ama'"):
        compare.entry_config(cfg, "amma(kd_target=original)")
    with pytest.raises(UserError, match="did you mean 'original'"):
        compare.entry_config(cfg, "ama(kd_target=orignal)")
    with pytest.raises(UserError, match="key=value"):
        compare.parse_entry("ama(original)")


def test_bad_entry_is_a_one_line_error_before_anything_trains(cli, tmp_path):
    result = cli("-c", "smoke", "-r", str(tmp_path / "run"), "--set",
                 'compare.methods=[student,"ama(kd_target=teacher)"]', "compare")
    assert result.exit_code == 2 and "'distill.kd_target' = 'teacher' is not allowed" in result.output
    assert not (tmp_path / "run" / "teacher").exists()
