"""The one reader/writer layout of ``cellrlhf evaluate``'s directory: round trip and errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cellrlhf.evaluation.eval_dir import (
    EVALUATION_FORMAT,
    ID_COLUMNS,
    MANIFEST_FILENAME,
    EvaluationDirError,
    context_dir,
    is_evaluation_dir,
    open_evaluation_dir,
    prediction_path,
    scatter_path,
    table_paths,
)

METRICS = pd.DataFrame(
    {
        "method": ["sft", "mean"],
        "method_type": ["model", "baseline"],
        "cell_context": ["K562", "K562"],
        "perturbation": ["A", "A"],
        "kind": ["single", "single"],
        "pearson_delta": [0.5, 0.25],
    }
)
SUMMARY = pd.DataFrame(
    {
        "method": ["sft", "mean"],
        "method_type": ["model", "baseline"],
        "cell_context": ["all", "all"],
        "kind": ["all", "all"],
        "n_perturbations": [1, 1],
        "pearson_delta": [0.5, 0.25],
    }
)
MANIFEST = {
    "format": EVALUATION_FORMAT,
    "version": 1,
    "simulated": True,
    "dataset": {"dir": "/data/norman", "name": "norman", "split_kind": "unseen_single"},
    "models": {"sft": {"dir": "/models/sft", "stage": "sft"}},
    "identical_models": [["sft", "grpo"]],
    "settings": {"baselines": ["control", "mean"], "seed": 3},
}


def _write(out, manifest=MANIFEST):
    """What the writer does: tables at :func:`table_paths`, then the manifest."""
    paths = table_paths(out)
    out.mkdir(parents=True, exist_ok=True)
    METRICS.to_csv(paths["metrics_csv"], index=False)
    SUMMARY.to_csv(paths["summary_csv"], index=False)
    (out / MANIFEST_FILENAME).write_text(json.dumps(manifest))
    return out


def test_the_error_is_a_value_error():
    assert issubclass(EvaluationDirError, ValueError)


def test_the_writer_layout():
    assert {k: p.as_posix() for k, p in table_paths("e").items()} == {
        "metrics_csv": "e/metrics.csv",
        "summary_csv": "e/summary.csv",
        "validity_csv": "e/validity.csv",
        "markdown": "e/metrics.md",
    }
    assert prediction_path("e", "grpo/best 1").as_posix() == "e/predictions/grpo_best_1.h5ad"
    assert scatter_path("e", "sft").as_posix() == "e/pred_vs_real_sft.png"
    assert context_dir("e", "K562 (CRISPRi)").as_posix() == "e/contexts/K562_CRISPRi"


def test_round_trip(tmp_path):
    evaluation = open_evaluation_dir(_write(tmp_path / "eval"))
    assert evaluation.path == tmp_path / "eval" and evaluation.manifest == MANIFEST
    pd.testing.assert_frame_equal(evaluation.metrics, METRICS)
    pd.testing.assert_frame_equal(evaluation.summary, SUMMARY)
    assert evaluation.models == {"sft": {"dir": "/models/sft", "stage": "sft"}}
    assert evaluation.dataset["name"] == "norman"
    assert evaluation.dataset_dir.as_posix() == "/data/norman"
    assert evaluation.settings == {"baselines": ["control", "mean"], "seed": 3}
    assert evaluation.baselines == ("control", "mean")
    assert evaluation.identical_models == [["sft", "grpo"]]
    assert evaluation.simulated is True
    assert evaluation.read_table("validity.csv", required=False) is None
    assert (evaluation.bar_plot, evaluation.validity_plot, evaluation.scatter_plots) == (
        None,
        None,
        [],
    )
    assert is_evaluation_dir(tmp_path / "eval")


def test_identifying_columns_are_strings(tmp_path):
    out = _write(tmp_path / "eval")
    METRICS.assign(perturbation=[1, 1]).to_csv(out / "metrics.csv", index=False)
    metrics = open_evaluation_dir(out).metrics
    assert metrics["perturbation"].tolist() == ["1", "1"]
    assert metrics[list(ID_COLUMNS)].dtypes.tolist() == [object] * len(ID_COLUMNS)


def test_a_missing_directory_or_manifest_names_the_command(tmp_path):
    with pytest.raises(EvaluationDirError, match="does not exist: run `cellrlhf evaluate --out"):
        open_evaluation_dir(tmp_path / "nope")
    with pytest.raises(EvaluationDirError, match="manifest.json is missing or unreadable.*re-run"):
        open_evaluation_dir(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(EvaluationDirError, match="manifest.json is missing or unreadable"):
        open_evaluation_dir(tmp_path)
    assert not is_evaluation_dir(tmp_path)


def test_another_format_is_refused(tmp_path):
    out = _write(tmp_path / "eval", {**MANIFEST, "format": "cellrlhf.dataset"})
    with pytest.raises(
        EvaluationDirError,
        match="not a `cellrlhf evaluate` output .*'cellrlhf.dataset'.*pass the --out directory",
    ):
        open_evaluation_dir(out)
    assert not is_evaluation_dir(out)


def test_a_missing_table_or_column_is_an_error_naming_the_fix(tmp_path):
    out = _write(tmp_path / "eval")
    (out / "metrics.csv").unlink()
    evaluation = open_evaluation_dir(out)  # the tables are read on first use
    with pytest.raises(
        EvaluationDirError, match="metrics.csv is missing.*re-run `cellrlhf evaluate"
    ):
        _ = evaluation.metrics
    METRICS.drop(columns="kind").to_csv(out / "metrics.csv", index=False)
    with pytest.raises(EvaluationDirError, match=r"lacks column\(s\) \['kind'\].*re-run"):
        _ = open_evaluation_dir(out).metrics


def test_find_evaluation_dirs_labels_evaluations_and_skips_other_dirs(tmp_path):
    import json

    from cellrlhf.evaluation.aggregate_files import find_evaluation_dirs
    from cellrlhf.evaluation.eval_dir import EVALUATION_FORMAT

    def manifest(path, fmt):
        path.mkdir(parents=True)
        (path / "manifest.json").write_text(json.dumps({"format": fmt}))

    manifest(tmp_path / "f0_s1" / "eval", EVALUATION_FORMAT)
    manifest(tmp_path / "f1_s0" / "eval", EVALUATION_FORMAT)
    manifest(tmp_path / "aggregate", "cellrlhf.aggregate")
    manifest(tmp_path / "data", "cellrlhf.dataset")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")

    found = find_evaluation_dirs(tmp_path)
    assert found == {
        "f0_s1_eval": tmp_path / "f0_s1" / "eval",
        "f1_s0_eval": tmp_path / "f1_s0" / "eval",
    }
    assert find_evaluation_dirs(tmp_path / "f0_s1" / "eval") == {
        "eval": tmp_path / "f0_s1" / "eval"
    }
