import math

import numpy as np
import pandas as pd
import pytest
from synthetic_evals import metrics_table, write_eval_dir

from cellrlhf.evaluation.aggregate import aggregate_evaluations
from cellrlhf.evaluation.verdict import (
    compare_sentence,
    display_name,
    setting_verdicts,
    verdict_table,
)

WHAT = "held-out perturbation-specific fidelity"


@pytest.mark.parametrize(
    ("diff", "low", "high", "status", "sentence"),
    [
        (0.06, 0.02, 0.10, "improved",
         f"GRPO improved {WHAT} over SFT by +0.06 (95% CI 0.02 to 0.10, 24 perturbations)."),
        (-0.01, -0.05, 0.03, "not_improved",
         f"GRPO did not improve {WHAT} over SFT (-0.01, 95% CI -0.05 to 0.03, 24 perturbations)."),
        (-0.08, -0.12, -0.03, "worse",
         f"GRPO was worse than SFT on {WHAT} by -0.08 (95% CI -0.12 to -0.03, 24 perturbations)."),
        (0.004, 0.001, 0.008, "improved",
         f"GRPO improved {WHAT} over SFT by +0.004 (95% CI 0.001 to 0.008, 24 perturbations)."),
    ],
)  # fmt: skip
def test_rl_vs_sft_sentences(diff, low, high, status, sentence):
    got = compare_sentence("grpo", "sft", diff, low, high, 24, metric="pearson_specific")
    assert got == (status, sentence)


def test_undefined_and_single_perturbation_sentences():
    status, text = compare_sentence("ppo", "sft", math.nan, math.nan, math.nan, 0,
                                    metric="pearson_specific")  # fmt: skip
    assert status == "undefined"
    assert text == f"undefined: PPO vs SFT on {WHAT}: no perturbation where both are defined."
    status, text = compare_sentence("ppo", "sft", 0.1, math.nan, math.nan, 1,
                                    metric="pearson_specific")  # fmt: skip
    assert status == "no_interval" and "+0.10 on 1 perturbation, too few for an interval" in text


def test_baseline_sentences_and_error_metrics_read_in_their_direction():
    assert compare_sentence(
        "sft", "mean", 0.05, 0.01, 0.09, 6, metric="pearson_specific", against_baseline=True
    ) == (
        "improved",
        f"SFT beat the best baseline (mean) on {WHAT} by +0.05 (95% CI 0.01 to 0.09, "
        "6 perturbations).",
    )
    status, text = compare_sentence(
        "sft", "mean", -0.02, -0.06, 0.01, 6, metric="pearson_delta", against_baseline=True
    )
    assert status == "not_improved" and text.startswith("SFT did not beat the best baseline (mean)")
    # a baseline defined on only some perturbations (additive, unmeasured singles elsewhere)
    assert compare_sentence(
        "grpo", "additive", -0.2, -0.3, -0.1, 5, metric="pearson_specific", where_defined=True
    ) == (
        "worse",
        f"GRPO was worse than additive where it is defined on {WHAT} by -0.20 (95% CI -0.30 to "
        "-0.10, 5 perturbations).",
    )
    # lower is better for an error: a negative difference is an improvement
    assert compare_sentence("grpo", "sft", -0.1, -0.2, -0.05, 6, metric="mae")[0] == "improved"
    assert compare_sentence("grpo", "sft", 0.1, 0.05, 0.2, 6, metric="mae")[0] == "worse"


def test_display_names():
    assert [display_name(n) for n in ("sft", "grpo", "ppo_last", "my_model")] == [
        "SFT",
        "GRPO",
        "PPO (last)",
        "my_model",
    ]


def _evals(tmp_path, *, simulated=False, baseline_value=0.1, ceiling=0.5, grpo_gain=0.05):
    perts = [f"P{i}" for i in range(6)]
    sft = [0.1, 0.2, 0.3, 0.0, 0.1, 0.2]
    values = {
        "sft": sft,
        "grpo": [v + grpo_gain for v in sft],
        "ppo": [np.nan] * 6,
        "control": [np.nan] * 6,
        "mean": [baseline_value] * 6,
        "split_half": [ceiling] * 6,
        "representation_decoder": [0.4] * 6,
    }
    path = write_eval_dir(
        tmp_path / "eval",
        metrics_table(values, perturbations=perts, metric="pearson_delta"),
        simulated=simulated,
        identical=[["sft", "ppo"]],
    )
    return aggregate_evaluations({"fold0_seed0": path}, n_boot=300)


def test_setting_verdict_names_best_model_baseline_ceiling_and_comparisons(tmp_path):
    (v,) = setting_verdicts(_evals(tmp_path))
    assert (v.best_model.method, v.best_baseline.method) == ("grpo", "mean")
    assert v.best_model.mean == pytest.approx(0.2) and v.best_baseline.mean == pytest.approx(0.1)
    assert v.ceiling.method == "split_half (Spearman-Brown)"
    assert v.ceiling.mean == pytest.approx(2 * 0.5 / 1.5)
    assert v.representation.mean == pytest.approx(0.4)
    statuses = {c.label: c.status for c in v.comparisons}
    assert statuses == {
        "grpo - sft": "improved",
        "ppo - sft": "undefined",
        "sft - best baseline (mean)": "not_improved",
        # +0.10 over [0.05, 0.15, 0.25, -0.05, 0.05, 0.15]: six perturbations get Student's t
        # interval, -0.015 to 0.215 (a percentile bootstrap said "improved": too narrow for six)
        "grpo - best baseline (mean)": "not_improved",
        "ppo - best baseline (mean)": "undefined",
    }
    assert v.metric == "pearson_delta"  # the headline without pearson_specific columns
    assert v.sentences[0].startswith("GRPO improved held-out fidelity of the change from control")
    assert any("SFT, PPO have identical weights" in s for s in v.sentences)
    assert any("Baseline additive applies to none of the held-out single" in s for s in v.notes)
    table = verdict_table(v)
    assert table.iloc[:4, 0].tolist() == [
        "best model",
        "best baseline",
        "ceiling (split-half)",
        "ceiling (decoder)",
    ]
    assert table.iloc[4].tolist() == ["difference (improved)", "grpo - sft", "+0.050",
                                      "0.050 to 0.050", 6]  # fmt: skip


def test_a_baseline_above_the_ceiling_is_explained_and_simulated_data_said_first(tmp_path):
    (v,) = setting_verdicts(_evals(tmp_path, simulated=True, baseline_value=0.9, ceiling=0.2))
    assert v.sentences[0].startswith("SIMULATED DATA")
    (note,) = [n for n in v.notes if "above the split-half ceiling" in n]
    assert "The best baseline (mean, 0.90) scores above the split-half ceiling (0.33)" in note
    assert "shared control noise" in note and "read pearson_specific" in note


def test_the_above_ceiling_reason_fits_the_metric():
    from cellrlhf.evaluation.verdict import MethodScore, _above_ceiling_note

    base = MethodScore(method="control", mean=0.21, ci_low=0.17, ci_high=0.25, n_perturbations=9)
    ceil = MethodScore(method="split_half", mean=0.18, ci_low=0.12, ci_high=0.25, n_perturbations=9)
    specific = _above_ceiling_note(base, ceil, "pearson_specific")
    # the average response is taken out of pearson_specific: it cannot be the reason there
    assert "average response" not in specific and "respond less than average" in specific
    assert "shared" not in specific
    delta = _above_ceiling_note(base, ceil, "pearson_delta_top20")
    assert "shared control noise" in delta and "read pearson_specific" in delta


def test_a_difference_ahead_without_a_verdict_says_how_many_perturbations_would_settle_it(
    tmp_path,
):
    (v,) = setting_verdicts(_evals(tmp_path))
    planning = [n for n in v.notes if "held-out perturbations for its interval" in n]
    # grpo - mean: +0.10 over [0.05, 0.15, 0.25, -0.05, 0.05, 0.15] (sd 0.105): t_6 / sqrt(7) *
    # 0.105 = 0.097 < 0.10 <= t_5 / sqrt(6) * 0.105 = 0.110, so 7; sft - mean: +0.05 at the same
    # spread needs (1.96 * 0.105 / 0.05)^2 = 16.9 -> 17; grpo - sft (a verdict) gets none
    assert planning == [
        "SFT vs mean: at the spread between perturbations seen here (sd 0.105), a difference "
        "of +0.050 needs about 17 held-out perturbations for its interval to clear 0 (6 here); "
        "more seeds only average within a perturbation.",
        "GRPO vs mean: at the spread between perturbations seen here (sd 0.105), a difference "
        "of +0.100 needs about 7 held-out perturbations for its interval to clear 0 (6 here); "
        "more seeds only average within a perturbation.",
    ]
    # a difference far inside the spread is read as none, not as a number of perturbations
    from cellrlhf.evaluation.verdict import Comparison, _planning_note

    # (1.96 * 0.044 / 0.001)^2 = 7437.3 -> 7438
    tiny = Comparison("grpo - sft", "grpo", "sft", 0.001, -0.02, 0.02, 15, 0, "not_improved", "")
    assert _planning_note(tiny, 0.044, "pearson_specific", 0.95) == (
        "GRPO vs SFT: a difference of +0.001 is small against the spread between perturbations "
        "seen here (sd 0.044): an interval clear of 0 would need about 7438 held-out "
        "perturbations, over 10 times the 15 here; read it as no difference."
    )
    # a model behind its reference gets no planning note
    (behind,) = setting_verdicts(_evals(tmp_path / "b", baseline_value=0.5, grpo_gain=0.05))
    assert not [n for n in behind.notes if "held-out perturbations for its interval" in n]


def test_held_out_singles_with_unmeasured_targets_are_named(tmp_path):
    from cellrlhf.evaluation.aggregate_files import read_aggregate, write_aggregate

    paths = {}
    for fold, perts in enumerate((["P0", "X1", "X2"], ["P3", "X4", "P0+X1"])):
        table = metrics_table(
            {"sft": [0.1, 0.2, 0.3], "mean": [0.0] * 3}, perturbations=perts, metric="pearson_delta"
        )
        table["target_measured"] = ~table["perturbation"].str.contains("X")  # X*: unmeasured
        paths[f"fold{fold}_seed0"] = write_eval_dir(tmp_path / f"e{fold}", table)
    agg = aggregate_evaluations(paths, n_boot=100)
    (setting,) = agg.settings
    # singles only (the combination is not counted), each held-out single once
    assert agg.unmeasured_targets == {setting: {"n_singles": 5, "unmeasured": ["X1", "X2", "X4"]}}
    (v,) = setting_verdicts(agg)
    (note,) = [n for n in v.notes if "does not measure" in n]
    assert note.startswith(
        "The data does not measure the target gene of 3 of the 5 held-out singles (X1, X2, X4)"
    )
    write_aggregate(agg, tmp_path / "agg")
    assert read_aggregate(tmp_path / "agg").unmeasured_targets == agg.unmeasured_targets
    # evaluations without the column (written before it) and other split kinds: no note
    plain = {
        "fold0_seed0": write_eval_dir(
            tmp_path / "old",
            metrics_table({"sft": [0.1], "mean": [0.0]}, perturbations=["X1"]),
        )
    }
    assert aggregate_evaluations(plain, n_boot=100).unmeasured_targets == {}
    combos = dict(paths)
    for label, path in paths.items():
        combos[label] = write_eval_dir(
            tmp_path / f"c{label}",
            pd.read_csv(path / "metrics.csv"),
            split_kind="unseen_combo",
        )
    assert aggregate_evaluations(combos, n_boot=100).unmeasured_targets == {}
