import json
import logging

import numpy as np
import pandas as pd
import pytest
from synthetic_evals import metrics_table, write_eval_dir

from cellrlhf.evaluation.aggregate import aggregate_evaluations, higher_is_better
from cellrlhf.evaluation.aggregate_cli import cli
from cellrlhf.evaluation.aggregate_files import read_aggregate, write_aggregate
from cellrlhf.evaluation.eval_dir import EvaluationDirError
from cellrlhf.evaluation.verdict import verdict_lines

SFT = {0: [0.1, 0.2, 0.3], 1: [0.0, 0.1, 0.2]}
PERTS = {0: ["P0", "P1", "P2"], 1: ["P3", "P4", "P5"]}
SETTING = "unseen_single (norman)"


def _fold_table(fold, *, grpo_gain=0.05):
    sft = SFT[fold]
    values = {
        "sft": sft,
        "grpo": [v + grpo_gain for v in sft],
        "control": [np.nan] * 3,
        "mean": [0.1] * 3,
        "ridge": [0.12] * 3,
        "split_half": [0.5] * 3,
    }
    extra = {
        "mae": {"sft": [1.0] * 3, "grpo": [1.0] * 3, "control": [0.6] * 3, "mean": [0.5] * 3,
                "ridge": [0.7] * 3, "split_half": [0.3] * 3},
        "discrimination_score_l1": {m: [1.0] * 3 for m in values},
    }  # fmt: skip
    return metrics_table(values, perturbations=PERTS[fold], extra=extra)


@pytest.fixture()
def two_folds(tmp_path):
    return {
        f"fold{f}_seed0": write_eval_dir(
            tmp_path / f"f{f}" / "eval", _fold_table(f), name=f"norman_fold{f}"
        )
        for f in (0, 1)
    }


def _row(table, **where):
    mask = np.ones(len(table), dtype=bool)
    for key, value in where.items():
        mask &= table[key] == value
    assert mask.sum() == 1, (where, mask.sum())
    return table[mask].iloc[0]


def test_pooled_and_per_fold_tables_by_hand(two_folds):
    agg = aggregate_evaluations(two_folds, n_boot=300)
    assert agg.settings == [SETTING] and agg.headline == "pearson_specific"
    assert agg.runs[["label", "fold", "seed"]].values.tolist() == [
        ["fold0_seed0", 0, 0],
        ["fold1_seed0", 1, 0],
    ]
    sft = _row(agg.pooled, method="sft", kind="all", metric="pearson_specific")
    assert sft["mean"] == pytest.approx(0.15)
    assert sft["ci_low"] < 0.15 < sft["ci_high"]
    assert (sft["n_perturbations"], sft["n_runs"], sft["method_type"]) == (6, 2, "model")
    control = _row(agg.pooled, method="control", kind="all", metric="pearson_specific")
    assert np.isnan(control["mean"]) and control["n_dropped"] == 6
    sb = agg.pooled[agg.pooled["method"] == "split_half (Spearman-Brown)"]
    assert "mae" not in set(sb["metric"]), "Spearman-Brown maps correlations, not errors"
    folds = agg.per_fold[
        (agg.per_fold["method"] == "sft")
        & (agg.per_fold["kind"] == "all")
        & (agg.per_fold["metric"] == "pearson_specific")
    ]
    assert folds["value"].tolist() == pytest.approx([0.2, 0.1])
    assert set(folds["cell_context"]) == {"all"} and folds["n_perturbations"].tolist() == [3, 3]


def test_paired_differences_rl_minus_sft_and_models_minus_best_baseline(two_folds):
    agg = aggregate_evaluations(two_folds, n_boot=300)
    paired = agg.paired[
        (agg.paired["kind"] == "all") & (agg.paired["metric"] == "pearson_specific")
    ]
    assert paired["comparison"].tolist() == [
        "grpo - sft",
        "sft - best baseline (ridge)",
        "grpo - best baseline (ridge)",
    ]
    rl = _row(paired, comparison="grpo - sft")
    assert rl["mean_diff"] == pytest.approx(0.05)
    assert rl["ci_low"] == pytest.approx(0.05) and rl["ci_high"] == pytest.approx(0.05)
    base = _row(paired, comparison="sft - best baseline (ridge)")
    assert base["mean_diff"] == pytest.approx(0.03) and base["n_perturbations"] == 6
    # for an error metric the best baseline is the lowest
    mae = agg.paired[(agg.paired["kind"] == "all") & (agg.paired["metric"] == "mae")]
    assert "sft - best baseline (mean)" in set(mae["comparison"])
    assert not higher_is_better("mae") and higher_is_better("pearson_specific")


def test_rl_is_also_compared_with_sft_under_the_grammar(tmp_path):
    # sft sampled freely, sft_grammar the same model under the cell grammar, grpo constrained:
    # grpo - sft_grammar is RL's own effect, sft_grammar - sft the grammar's
    # ppo, an RL policy sampled freely, is compared with SFT sampled freely only
    sft = [0.1, 0.2, 0.3]
    values = {"sft": sft, "sft_grammar": [v + 0.03 for v in sft], "ppo": [v + 0.01 for v in sft],
              "grpo": [v + 0.05 for v in sft], "mean": [0.1] * 3, "split_half": [0.5] * 3}  # fmt: skip
    sampled = {"sft": False, "sft_grammar": True, "ppo": False, "grpo": True}
    models = {m: {"stage": m, "validity": {"constrained": c}} for m, c in sampled.items()}
    path = write_eval_dir(
        tmp_path / "eval",
        metrics_table(values, perturbations=PERTS[0]),
        extra_manifest={"models": models},
    )
    agg = aggregate_evaluations({"fold0_seed0": path}, n_boot=300)
    paired = agg.paired[
        (agg.paired["kind"] == "all") & (agg.paired["metric"] == "pearson_specific")
    ]
    diffs = dict(zip(paired["comparison"], paired["mean_diff"], strict=True))
    assert list(diffs)[:4] == [
        "sft_grammar - sft",
        "ppo - sft",
        "grpo - sft",
        "grpo - sft_grammar",
    ]
    assert diffs["grpo - sft_grammar"] == pytest.approx(0.02)
    assert diffs["sft_grammar - sft"] == pytest.approx(0.03)
    assert diffs["grpo - sft"] == pytest.approx(0.05)


def test_spearman_brown_ceiling_not_applicable_baselines_and_flat_metrics(two_folds):
    agg = aggregate_evaluations(two_folds, n_boot=300)
    sb = _row(
        agg.pooled,
        method="split_half (Spearman-Brown)",
        kind="all",
        metric="discrimination_score_l1",
    )
    assert sb["mean"] == pytest.approx(1.0) and sb["method_type"] == "ceiling"
    assert agg.not_applicable.values.tolist() == [[SETTING, "additive", "single"]]
    flat = agg.flat_metrics
    assert set(flat["metric"]) == {"discrimination_score_l1"} and set(flat["value"]) == {1.0}


def test_seeds_of_one_fold_are_averaged_per_perturbation(tmp_path):
    evals = {
        f"fold0_seed{s}": write_eval_dir(tmp_path / f"s{s}", _fold_table(0, grpo_gain=gain))
        for s, gain in ((0, 0.1), (1, 0.3))
    }
    agg = aggregate_evaluations(evals, n_boot=300)
    rl = _row(agg.paired, comparison="grpo - sft", kind="all", metric="pearson_specific")
    assert rl["mean_diff"] == pytest.approx(0.2) and rl["n_perturbations"] == 3
    assert rl["ci_low"] == pytest.approx(0.2) and rl["ci_high"] == pytest.approx(0.2)
    sft = _row(agg.pooled, method="sft", kind="all", metric="pearson_specific")
    assert (sft["n_perturbations"], sft["n_runs"]) == (3, 2)


def test_one_evaluation_gets_intervals_over_its_perturbations(two_folds):
    agg = aggregate_evaluations({"demo": two_folds["fold0_seed0"]}, n_boot=300)
    sft = _row(agg.pooled, method="sft", kind="all", metric="pearson_specific")
    # three perturbations (0.1, 0.2, 0.3): Student's t interval, 0.2 +- t_2 * 0.1 / sqrt(3)
    half = 4.302652729911275 * 0.1 / np.sqrt(3)
    assert sft["mean"] == pytest.approx(0.2)
    assert (sft["ci_low"], sft["ci_high"]) == pytest.approx((0.2 - half, 0.2 + half))


def test_fold_and_seed_from_the_manifest_win_over_the_label(tmp_path):
    path = write_eval_dir(
        tmp_path / "e", _fold_table(0), extra_manifest={"run": {"fold": 3, "seed": 7}}
    )
    agg = aggregate_evaluations({"fold0_seed0": path}, n_boot=50)
    assert agg.runs[["fold", "seed"]].values.tolist() == [[3, 7]]


def test_bad_inputs_get_one_clear_error(tmp_path, two_folds):
    with pytest.raises(EvaluationDirError, match="evaluation 'x'.*does not exist: run"):
        aggregate_evaluations({"x": tmp_path / "missing"})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text(json.dumps({"format": "cellrlhf.dataset"}))
    with pytest.raises(ValueError, match="not a `cellrlhf evaluate` output"):
        aggregate_evaluations({"x": tmp_path / "other"})
    with pytest.raises(ValueError, match="are both unseen_single \\(norman\\), fold 0, seed 0"):
        aggregate_evaluations({"a": two_folds["fold0_seed0"], "b": two_folds["fold1_seed0"]})
    with pytest.raises(ValueError, match=r"\['no_such'\] are in none.*pearson_specific"):
        aggregate_evaluations(two_folds, metrics=["no_such"])
    with pytest.raises(ValueError, match="at least one"):
        aggregate_evaluations({})


def test_write_read_round_trip_and_plots(tmp_path, two_folds):
    agg = aggregate_evaluations(two_folds, n_boot=300, seed=4)
    paths = write_aggregate(agg, tmp_path / "agg")
    back = read_aggregate(tmp_path / "agg")
    for name in ("per_fold", "pooled", "paired", "runs", "not_applicable", "flat_metrics"):
        pd.testing.assert_frame_equal(
            getattr(back, name), getattr(agg, name), check_dtype=False, obj=name
        )
    assert (back.headline, back.metrics, back.seed) == (agg.headline, agg.metrics, 4)
    for key in (f"plot_pooled_{SETTING}", f"plot_paired_{SETTING}"):
        assert paths[key].stat().st_size > 5000
    verdict = json.loads(paths["verdict_json"].read_text())
    assert verdict["settings"][0]["best_model"]["method"] == "grpo"
    assert "GRPO improved held-out perturbation-specific fidelity over SFT by +0.05" in (
        paths["verdict_md"].read_text()
    )


def test_cli_writes_the_aggregate_and_reports_bad_dirs(tmp_path, two_folds, caplog):
    out = tmp_path / "agg"
    argv = [a for label, p in two_folds.items() for a in ("--eval", f"{label}={p}")]
    assert cli([*argv, "--out", str(out), "--n-boot", "200", "--metric", "pearson_specific"]) == 0
    pooled = pd.read_csv(out / "pooled.csv")
    assert set(pooled["metric"]) == {"pearson_specific"}
    with caplog.at_level(logging.ERROR):
        assert cli(["--eval", f"x={tmp_path / 'nope'}", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in caplog.text


def test_verdict_lines_from_an_aggregate_dir_and_from_a_run_dir(tmp_path, two_folds):
    lines = verdict_lines(tmp_path, n_boot=300)  # the run dir: aggregated on the fly
    assert lines[0] == f"{SETTING}: pearson_specific, 95% intervals over held-out perturbations"
    assert "best model" in lines[2] and "grpo" in lines[2]
    assert any(
        line.startswith("  - GRPO improved held-out perturbation-specific") for line in lines
    )
    write_aggregate(aggregate_evaluations(two_folds, n_boot=300), tmp_path / "aggregate")
    assert verdict_lines(tmp_path) == verdict_lines(tmp_path / "aggregate") == lines
    assert verdict_lines(tmp_path / "empty_nothing") == [
        f"No evaluation found under {tmp_path / 'empty_nothing'}: no verdict."
    ]


def test_unseen_pair_resamples_held_out_pairs_not_perturbation_labels(tmp_path):
    """One drug held out in a different patient per fold (Zhao 2021): three held-out units, not
    one; the same label in two contexts of one unseen_single run stays one unit."""
    evals = {}
    for fold, (context, sft) in enumerate((("PW030", 0.3), ("PW032", 0.4), ("PW034", 0.5))):
        table = metrics_table(
            {"sft": [sft], "grpo": [sft + 0.1], "context_transfer": [0.45]},
            perturbations=["panobinostat"],
            metric="pearson_delta",
            context=context,
        )
        evals[f"fold{fold}_seed0"] = write_eval_dir(
            tmp_path / f"f{fold}", table, name="zhao", split_kind="unseen_pair"
        )
    agg = aggregate_evaluations(evals, n_boot=300)
    sft = _row(agg.pooled, method="sft", kind="all", metric="pearson_delta")
    half = 4.302652729911275 * 0.1 / np.sqrt(3)  # Student's t over 3 units: 0.3, 0.4, 0.5
    assert sft["n_perturbations"] == 3 and sft["mean"] == pytest.approx(0.4)
    assert (sft["ci_low"], sft["ci_high"]) == pytest.approx((0.4 - half, 0.4 + half))
    rl = _row(agg.paired, comparison="grpo - sft", kind="all", metric="pearson_delta")
    assert rl["n_perturbations"] == 3 and rl["mean_diff"] == pytest.approx(0.1)
    # unseen_single: a held-out target is held out in every context, so it is one unit
    two_contexts = pd.concat(
        [
            metrics_table({"sft": [0.2]}, perturbations=["P0"], metric="pearson_delta", context=c)
            for c in ("A172", "U87MG")
        ]
    )
    single = aggregate_evaluations({"x": write_eval_dir(tmp_path / "s", two_contexts)}, n_boot=50)
    assert (
        _row(single.pooled, method="sft", kind="all", metric="pearson_delta")["n_perturbations"]
        == 1
    )


def test_headline_falls_back_to_pearson_delta_where_pearson_specific_is_undefined(tmp_path):
    table = metrics_table(
        {"sft": [0.3, 0.5], "context_transfer": [0.4, 0.4]},
        perturbations=["D1", "D2"],
        metric="pearson_delta",
        extra={"pearson_specific": {}},  # the column exists, NaN everywhere
    )
    assert table["pearson_specific"].isna().all()
    agg = aggregate_evaluations({"x": write_eval_dir(tmp_path / "e", table)}, n_boot=50)
    assert agg.headline == "pearson_delta"
    assert "pearson_specific" in set(agg.pooled["metric"])  # still aggregated, as NaN


def test_a_baseline_defined_on_some_perturbations_is_compared_where_defined_not_chosen_best(
    tmp_path,
):
    # additive predicts only the combinations whose singles are measured (here P0, the easy one):
    # its pooled mean (0.9, on one perturbation) must not make it the best baseline of a setting
    # scored on three; it is compared with each model on the perturbation it predicts
    values = {"sft": [0.8, 0.2, 0.3], "grpo": [0.85, 0.3, 0.4], "mean": [0.1, 0.1, 0.1],
              "additive": [0.9, np.nan, np.nan], "split_half": [0.95] * 3}  # fmt: skip
    path = write_eval_dir(tmp_path / "eval", metrics_table(values, perturbations=PERTS[0]))
    agg = aggregate_evaluations({"fold0_seed0": path}, n_boot=300)
    paired = agg.paired[
        (agg.paired["kind"] == "all") & (agg.paired["metric"] == "pearson_specific")
    ]
    diffs = dict(zip(paired["comparison"], paired["mean_diff"], strict=True))
    assert list(diffs) == [
        "grpo - sft",
        "sft - best baseline (mean)",
        "grpo - best baseline (mean)",
        "sft - additive (where defined)",
        "grpo - additive (where defined)",
    ]
    assert diffs["sft - best baseline (mean)"] == pytest.approx(1 / 3)
    assert diffs["sft - additive (where defined)"] == pytest.approx(-0.1)
    partial = _row(paired, comparison="grpo - additive (where defined)")
    assert (partial["n_perturbations"], partial["n_dropped"]) == (1, 2)
    lines = "\n".join(verdict_lines(tmp_path / "eval", n_boot=300))
    assert "SFT did not beat the best baseline (mean)" in lines
    assert "SFT vs additive where it is defined on held-out" in lines  # one perturbation
    assert "Baseline additive predicts 1 of the 3 held-out perturbations" in lines
