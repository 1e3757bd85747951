import numpy as np
import pandas as pd
import pytest

from cellrlhf.evaluation.eval_report import (
    ceiling_notes,
    markdown_summary,
    summarize_methods,
    summary_table,
)
from cellrlhf.evaluation.scoring import Evaluation


def _long(rows):
    return pd.DataFrame(
        rows,
        columns=[
            "method",
            "perturbation",
            "kind",
            "pearson_delta",
            "pearson_delta_top20",
            "pearson_specific",
            "pearson_specific_top20",
            "mae",
        ],
    )


TABLE = _long(
    [
        ("split_half", "A", "single", 0.2, 0.4, 0.5, 0.6, 0.1),
        ("split_half", "B", "single", 0.4, 0.6, 0.5, 0.2, 0.3),
        ("mean", "A", "single", 0.5, 0.7, 0.0, 0.0, 0.2),
        ("mean", "B", "single", 0.5, 0.9, 0.0, 0.0, 0.2),
        ("model", "A", "single", 0.1, 0.1, 0.2, 0.1, 0.5),
        ("model", "B", "single", 0.1, 0.1, 0.2, 0.1, 0.5),
    ]
)


def test_spearman_brown_row_on_every_correlation_metric():
    s = summarize_methods(TABLE, spearman_brown_from="split_half")
    sb = s[(s["method"] == "split_half (Spearman-Brown)") & (s["kind"] == "all")].iloc[0]
    # means 0.3, 0.5, 0.5, 0.4 -> 2r / (1 + r)
    assert sb["pearson_delta"] == pytest.approx(0.6 / 1.3)
    assert sb["pearson_delta_top20"] == pytest.approx(1.0 / 1.5)
    assert sb["pearson_specific"] == pytest.approx(1.0 / 1.5)
    assert sb["pearson_specific_top20"] == pytest.approx(0.8 / 1.4)
    assert np.isnan(sb["mae"]) and sb["n_perturbations"] == 2
    assert set(s["kind"]) == {"all", "single"}
    # no split-half method: no extra row
    plain = summarize_methods(
        TABLE[TABLE["method"] != "split_half"], spearman_brown_from="split_half"
    )
    assert set(plain["method"]) == {"mean", "model"}


def test_summary_table_of_evaluations_is_the_same():
    evaluations = {
        name: Evaluation(part.drop(columns="method"), {}, np.zeros((2, 1)), np.zeros((2, 1)), [])
        for name, part in TABLE.groupby("method", sort=False)
    }
    pd.testing.assert_frame_equal(
        summary_table(evaluations, spearman_brown_from="split_half"),
        summarize_methods(TABLE, spearman_brown_from="split_half"),
    )


def test_ceiling_notes_say_why_a_baseline_beats_the_ceiling():
    s = summarize_methods(TABLE, spearman_brown_from="split_half")
    notes = ceiling_notes(s)
    # mean: pearson_delta 0.5 > 0.462, top20 0.8 > 0.667 (both kinds); specific 0 < ceiling
    assert len(notes) == 2
    assert notes[0].startswith(
        "`mean` exceeds the ceiling `split_half (Spearman-Brown)` on `pearson_delta`"
    )
    assert "all 0.500 vs 0.462; single 0.500 vs 0.462" in notes[0]
    assert "share the same control mean" in notes[0] and "(mean: 0.000)" in notes[0]
    assert "`pearson_delta_top20` (all 0.800 vs 0.667;" in notes[1]
    # only the metrics asked for; an undefined ceiling bounds nothing
    assert ceiling_notes(s, metrics=["pearson_specific*"]) == []
    s.loc[s["method"] == "split_half (Spearman-Brown)", "pearson_delta"] = np.nan
    assert len(ceiling_notes(s)) == 1
    # another metric above its ceiling: the noisy-ceiling reason
    t = TABLE.copy()
    t.loc[t["method"] == "model", "pearson_specific"] = 0.9
    notes = ceiling_notes(summarize_methods(t, spearman_brown_from="split_half"))
    assert any("`model`" in n and "`pearson_specific`" in n and "by chance" in n for n in notes)
    assert ceiling_notes(summarize_methods(TABLE)) != []  # the raw split-half row bounds too
    assert ceiling_notes(summarize_methods(TABLE[TABLE["method"] != "split_half"])) == []


def test_markdown_lists_the_notes_under_the_tables():
    text = markdown_summary(summarize_methods(TABLE, spearman_brown_from="split_half"))
    assert "| split_half (Spearman-Brown) | 2 | 0.462 |" in text
    assert text.index("### single") < text.index("**Above the ceiling:**")
    assert "- `mean` exceeds the ceiling" in text
    assert "Above the ceiling" not in markdown_summary(
        summarize_methods(TABLE, spearman_brown_from="split_half"), notes=False
    )
