import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellrlhf.evaluation.cli import cli
from cellrlhf.sft.model_dir import load_model_info

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def evaluation(sim_model_dir, sim_dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    code = cli(
        [
            "--dataset_dir",
            str(sim_dataset_dir),
            "--model",
            f"sft={sim_model_dir}",
            "--model",
            f"ppo={out.parent / 'no_such_model'}",
            "--skip-missing",
            "--config",
            str(REPO / "configs" / "eval" / "tiny.yaml"),
            "--max_prompts",
            "4",
            "--seed",
            "3",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    return out


def test_table_has_model_rows_next_to_baselines_and_ceilings_per_context(evaluation):
    summary = pd.read_csv(evaluation / "summary.csv")
    contexts = set(summary["cell_context"]) - {"all"}
    assert len(contexts) == 2 and "all" in set(summary["cell_context"])
    for ctx in contexts:
        part = summary[(summary["cell_context"] == ctx) & (summary["kind"] == "all")]
        methods = set(part["method"])
        assert {"sft", "control", "mean", "split_half", "representation_decoder"} <= methods
        assert "ppo" not in methods
        types = dict(zip(part["method"], part["method_type"], strict=True))
        assert types["sft"] == "model" and types["mean"] == "baseline"
        assert types["split_half"] == types["representation_decoder"] == "ceiling"
        model = part[part["method"] == "sft"].iloc[0]
        for column in ("valid_fraction", "valid_cell_fraction", "distinct_sentence_fraction"):
            assert 0.0 <= model[column] <= 1.0
        assert part[part["method"] == "mean"]["valid_fraction"].isna().all()
        # every method is asked for the same perturbations of the context; a baseline that
        # cannot apply to some says so instead of predicting them with another's answer
        asked = part["n_perturbations"] + part["n_not_applicable"]
        assert len(set(asked)) == 1
        full = part[part["method"].isin(["sft", "control", "mean", "split_half"])]
        assert (full["n_not_applicable"] == 0).all()
        # unseen singles: additive and context_transfer apply to none of them
        for name in ("additive", "context_transfer"):
            row = part[part["method"] == name].iloc[0]
            assert row["n_perturbations"] == 0 and row["n_not_applicable"] == asked.iloc[0]
            assert np.isnan(row["pearson_delta"])
        assert part[part["method"] == "mean"]["pearson_specific"].eq(0.0).all()
        assert np.isnan(part[part["method"] == "control"]["pearson_delta"]).all()
    for column in ("pearson_delta", "discrimination_score_l1", "overlap_at_N", "mae"):
        assert column in summary.columns
    assert set(summary["kind"]) >= {"all", "single"}
    metrics = pd.read_csv(evaluation / "metrics.csv")
    assert {"method", "method_type", "cell_context", "perturbation", "kind"} <= set(metrics.columns)
    # the ceiling is a ceiling: the split-half correlation beats the control baseline's
    ceiling = metrics[metrics["method"] == "split_half"]["pearson_delta"].mean()
    assert ceiling > 0.2


def test_outputs_plots_predictions_and_manifest(evaluation, sim_dataset_dir):
    for png in ("metrics.png", "pred_vs_real_sft.png", "validity.png"):
        assert (evaluation / png).stat().st_size > 5000, png
    md = (evaluation / "metrics.md").read_text()
    assert "SIMULATED DATA" in md and "| sft |" in md and "| split_half |" in md
    assert "| additive | 0 | n/a: applies to none of the held-out perturbations |" in md
    pred = ad.read_h5ad(evaluation / "predictions" / "sft.h5ad")
    generated = pred.obs[pred.obs["split_kind"] != "control"]
    assert generated["prompt_index"].nunique() == 4
    assert (generated.groupby("prompt_index").size() == 8).all()
    manifest = json.loads((evaluation / "manifest.json").read_text())
    data_manifest = json.loads((sim_dataset_dir / "manifest.json").read_text())
    assert manifest["format"] == "cellrlhf.evaluation" and manifest["simulated"] is True
    assert manifest["dataset"]["fingerprint"] == data_manifest["fingerprint"]
    assert list(manifest["models"]) == ["sft"] and manifest["skipped_models"] == ["ppo"]
    assert manifest["settings"]["cells_per_prompt"] == 8
    assert manifest["settings"]["max_prompts"] == 4 and manifest["seeds"]["sampling"] == 3
    assert manifest["started"].endswith("Z") and manifest["seconds"] > 0
    assert manifest["environment"]["torch_threads"] >= 1
    assert manifest["environment"]["versions"]["trl"] == "1.12.0"
    trained = manifest["models"]["sft"]["trained_environment"]
    assert trained == load_model_info(manifest["models"]["sft"]["dir"])["environment"]
    for name in manifest["files"].values():
        assert (evaluation / name).exists()


def _evaluation(rows):
    from cellrlhf.evaluation.scoring import Evaluation

    table = pd.DataFrame(
        rows, columns=["perturbation", "kind", "pearson_delta", "pearson_specific"]
    )
    return Evaluation(table, {}, np.zeros((len(rows), 1)), np.zeros((len(rows), 1)), np.array([]))


def test_all_contexts_summary_has_the_full_depth_ceiling_and_says_when_it_is_beaten():
    from cellrlhf.evaluation.evaluate import _summaries
    from cellrlhf.evaluation.run_report import run_markdown
    from cellrlhf.evaluation.settings import EvalSettings

    evaluations = {
        "K562": {
            "mean": _evaluation([("A", "single", 0.5, 0.0), ("B", "single", 0.5, 0.0)]),
            "split_half": _evaluation([("A", "single", 0.2, 0.6), ("B", "single", 0.4, 0.4)]),
        },
        "RPE1": {
            "mean": _evaluation([("C", "single", 0.1, 0.0)]),
            "split_half": _evaluation([("C", "single", 0.6, 0.2)]),
        },
    }
    _, summary = _summaries(evaluations, set(), pd.DataFrame())
    s = summary.set_index(["cell_context", "method", "kind"])
    ceiling = "split_half (Spearman-Brown)"
    # all contexts: split-half means 0.4 and 0.4 over the 3 (context, perturbation) rows
    assert s.loc[("all", ceiling, "all"), "pearson_delta"] == pytest.approx(0.8 / 1.4)
    assert s.loc[("all", ceiling, "all"), "pearson_specific"] == pytest.approx(0.8 / 1.4)
    assert s.loc[("K562", ceiling, "all"), "pearson_delta"] == pytest.approx(0.6 / 1.3)
    assert s.loc[("RPE1", ceiling, "single"), "pearson_specific"] == pytest.approx(0.4 / 1.2)
    assert s.loc[("all", ceiling, "all"), "method_type"] == "ceiling"
    md = run_markdown(summary, pd.DataFrame(), {"name": "x"}, EvalSettings(), [], [])
    # K562: mean 0.5 > 0.462 on pearson_delta -> explained, not a contradiction; RPE1: below
    k562 = md[md.index("## K562") : md.index("## RPE1")]
    assert "`mean` exceeds the ceiling `split_half (Spearman-Brown)` on `pearson_delta`" in k562
    assert "share the same control mean" in k562
    assert "exceeds the ceiling" not in md[md.index("## RPE1") :]


def test_without_models_the_baselines_and_ceilings_are_scored_on_the_same_prompts(
    evaluation, sim_dataset_dir, tmp_path
):
    out = tmp_path / "baselines"
    code = cli(
        [
            "--dataset_dir",
            str(sim_dataset_dir),
            "--config",
            str(REPO / "configs" / "eval" / "tiny.yaml"),
            "--max_prompts",
            "4",
            "--seed",
            "3",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    alone = pd.read_csv(out / "metrics.csv")
    assert set(alone["method_type"]) == {"baseline", "ceiling"}
    with_model = pd.read_csv(evaluation / "metrics.csv")
    keys = ["method", "cell_context", "perturbation"]
    # the same prompts (seeded subsample) -> the same baseline and ceiling rows as next to a model
    both = alone.merge(with_model, on=keys, suffixes=("", "_m"))
    assert len(both) == len(alone) > 0
    np.testing.assert_allclose(both["pearson_delta"], both["pearson_delta_m"], equal_nan=True)
    assert "none (baselines and ceilings only)" in (out / "metrics.md").read_text()


@pytest.fixture
def predict_calls(monkeypatch):
    """The names :func:`cellrlhf.evaluation.prediction.predict` is called with, in order."""
    from cellrlhf.evaluation import prediction

    calls = []
    real_predict = prediction.predict

    def counting_predict(model_dir, *args, **kwargs):
        calls.append(kwargs.get("name"))
        return real_predict(model_dir, *args, **kwargs)

    monkeypatch.setattr(prediction, "predict", counting_predict)
    return calls


def test_a_directory_named_twice_is_sampled_once_and_scored_identically(
    sim_model_dir, sim_dataset_dir, tmp_path, predict_calls
):
    out = tmp_path / "out"
    argv = ["--dataset_dir", str(sim_dataset_dir), "--model", f"grpo={sim_model_dir}"]
    argv += ["--model", f"grpo_last={sim_model_dir}", "--config"]
    argv += [str(REPO / "configs" / "eval" / "tiny.yaml"), "--max_prompts", "2"]
    assert cli([*argv, "--seed", "3", "--out", str(out), "--no-progress"]) == 0
    assert predict_calls == ["grpo"]
    metrics = pd.read_csv(out / "metrics.csv")
    a = metrics[metrics.method == "grpo"].drop(columns=["method"]).reset_index(drop=True)
    b = metrics[metrics.method == "grpo_last"].drop(columns=["method"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    manifest = json.loads((out / "manifest.json").read_text())
    assert ["grpo", "grpo_last"] in manifest["identical_models"]
    last = ad.read_h5ad(out / "predictions" / "grpo_last.h5ad")
    assert last.uns["cellrlhf_prediction"]["params"]["model"] == "grpo_last"
    kept = ad.read_h5ad(out / "predictions" / "grpo.h5ad")
    assert [n.replace("grpo_p", "grpo_last_p", 1) for n in kept.obs_names] == list(last.obs_names)
    assert any(n.startswith("grpo_last_p") for n in last.obs_names)


def test_identical_weights_in_two_directories_are_sampled_once(
    sim_model_dir, sim_dataset_dir, tmp_path, predict_calls
):
    import shutil

    from safetensors.torch import load_file, save_file

    # an RL stage that kept its starting policy: the same files in another directory
    kept = shutil.copytree(sim_model_dir, tmp_path / "grpo")
    info = json.loads((kept / "cellrlhf.json").read_text())
    (kept / "cellrlhf.json").write_text(json.dumps({**info, "stage": "grpo"}))
    moved = shutil.copytree(sim_model_dir, tmp_path / "moved")
    weights = load_file(moved / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01
    save_file(weights, moved / "model.safetensors", metadata={"format": "pt"})

    out = tmp_path / "out"
    argv = ["--dataset_dir", str(sim_dataset_dir), "--model", f"sft={sim_model_dir}"]
    argv += ["--model", f"grpo={kept}", "--model", f"ppo={moved}", "--config"]
    argv += [str(REPO / "configs" / "eval" / "tiny.yaml"), "--max_prompts", "2"]
    assert cli([*argv, "--seed", "3", "--out", str(out), "--no-progress"]) == 0
    assert predict_calls == ["sft", "ppo"]  # grpo's cells are sft's: same weights, tokenizer, settings
    metrics = pd.read_csv(out / "metrics.csv")
    a = metrics[metrics.method == "sft"].drop(columns=["method"]).reset_index(drop=True)
    b = metrics[metrics.method == "grpo"].drop(columns=["method"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    params = ad.read_h5ad(out / "predictions" / "grpo.h5ad").uns["cellrlhf_prediction"]["params"]
    assert (params["model"], params["model_stage"]) == ("grpo", "grpo")
    assert params["model_dir"] == str(kept)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["grpo"]["stage"] == "grpo"
    assert ["sft", "grpo"] in manifest["identical_models"]
    # the prediction names the weights that sampled it; the manifest records the same checksum
    assert params["weights_sha256"] == manifest["models"]["grpo"]["weights_sha256"]
    assert manifest["models"]["ppo"]["weights_sha256"] != params["weights_sha256"]
