"""``cellrlhf evaluate --split validation``: the RL selection prompts, scored as test is, so that
sampling settings are chosen there and never on test; ``--split train``: the fit check on
training perturbations, baselines leaving each one out."""

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellrlhf.evaluation.cli import cli
from cellrlhf.evaluation.real_data import real_cells

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def val_dataset_dir(tmp_path_factory):
    from tests.fixtures.sim_data import build_sim_dataset, eval_config

    split = {
        "kind": "unseen_single",
        "test_fraction": 0.3,
        "validation_fraction": 0.1,
        "n_validation_perturbations": 2,
    }
    return build_sim_dataset(tmp_path_factory.mktemp("val") / "sim", eval_config(split=split))


def _evaluate(dataset_dir, model_dir, out, *extra):
    code = cli(
        ["--dataset_dir", str(dataset_dir), "--model", f"sft={model_dir}",
         "--config", str(REPO / "configs" / "eval" / "tiny.yaml"), "--seed", "0",
         "--out", str(out), "--no-progress", "--max_prompts", "100", *extra]
    )  # fmt: skip
    assert code == 0
    return out


def test_validation_cells_are_measured_against_the_controls_their_prompts_used(val_dataset_dir):
    from datasets import load_from_disk

    splits = json.loads((val_dataset_dir / "splits.json").read_text())
    prompts = load_from_disk(str(val_dataset_dir / "rl"))["validation"]
    assert set(prompts["control_split"]) == {"train"}
    val = real_cells(val_dataset_dir, "validation", progress=False)
    controls = val.obs[val.obs["perturbation"] == "control"]
    own = set(splits["cells"]["validation"])
    # the split's own few controls are replaced by the training controls, as on test
    assert len(controls) > 0 and set(controls["split"]) == {"train"}
    assert not own & set(controls.index)
    train_controls = real_cells(val_dataset_dir, "train", progress=False).obs
    train_controls = train_controls[train_controls["perturbation"] == "control"]
    for ctx in set(prompts["cell_context"]):
        expected = set(train_controls.index[train_controls["cell_context"] == ctx])
        assert set(controls.index[controls["cell_context"] == ctx]) == expected
    assert set(prompts["perturbation"]) <= set(val.obs["perturbation"])


def test_evaluate_answers_the_validation_prompts_as_its_own_setting(
    val_dataset_dir, sim_model_dir, tmp_path
):
    from datasets import load_from_disk

    from cellrlhf.evaluation.aggregate import aggregate_evaluations

    rl = load_from_disk(str(val_dataset_dir / "rl"))
    val = _evaluate(val_dataset_dir, sim_model_dir, tmp_path / "val", "--split", "validation")
    test = _evaluate(val_dataset_dir, sim_model_dir, tmp_path / "test")
    for out, split in ((val, "validation"), (test, "test")):
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["settings"]["split"] == split
        pred = ad.read_h5ad(out / "predictions" / "sft.h5ad")
        sampled = set(pred.obs.loc[pred.obs["split_kind"] != "control", "perturbation"])
        assert sampled == set(rl[split]["perturbation"])
        assert pred.uns["cellrlhf_prediction"]["params"]["split"] == split
        metrics = pd.read_csv(out / "metrics.csv")
        scored = set(metrics.loc[metrics["method"] == "sft", "perturbation"]) - {"control"}
        assert scored == set(rl[split]["perturbation"])
    assert not set(rl["validation"]["perturbation"]) & set(rl["test"]["perturbation"])
    assert "**VALIDATION PROMPTS**" in (val / "metrics.md").read_text()
    assert "VALIDATION" not in (test / "metrics.md").read_text()
    agg = aggregate_evaluations({"fold0_seed0": val, "fold0_seed1": test}, n_boot=50)
    settings = agg.settings
    assert len(settings) == 2 and settings[0].endswith("[VALIDATION prompts]")
    assert settings[1] == settings[0].removesuffix(" [VALIDATION prompts]")


def test_real_cells_of_another_split_are_refused(val_dataset_dir, sim_model_dir):
    from cellrlhf.evaluation.prediction import predict

    test_cells = real_cells(val_dataset_dir, "test", progress=False)
    with pytest.raises(ValueError, match="'test' split's but the prompts are 'validation'"):
        predict(sim_model_dir, val_dataset_dir, real_test=test_cells, split="validation",
                cells_per_prompt=2, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="split='training'; choose one of"):
        predict(sim_model_dir, val_dataset_dir, split="training", cells_per_prompt=2)


def test_evaluate_train_is_a_fit_check_whose_baselines_never_see_the_answer(
    val_dataset_dir, sim_model_dir, tmp_path
):
    from datasets import load_from_disk

    from cellrlhf.evaluation.aggregate import aggregate_evaluations
    from cellrlhf.evaluation.baselines import predict_baselines
    from cellrlhf.evaluation.leave_one_out import leave_one_out_baselines
    from cellrlhf.evaluation.verdict import FIT_CHECK_NOTE, setting_verdicts

    trained = set(load_from_disk(str(val_dataset_dir / "rl"))["train"]["perturbation"])
    out = _evaluate(val_dataset_dir, sim_model_dir, tmp_path / "train", "--split", "train",
                    "--max_prompts", "4")  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["split"] == "train"
    metrics = pd.read_csv(out / "metrics.csv")
    scored = set(metrics.loc[metrics["method"] == "sft", "perturbation"])
    assert 0 < len(scored) <= 4 and scored <= trained
    text = (out / "metrics.md").read_text()
    assert "**TRAIN PROMPTS**" in text and text.startswith("# Training perturbations (fit check)")
    # every baseline was learned without the perturbation it predicts: the mean's change is
    # the leave-one-out mean, and none equals the real change (nearest shown its own cells would)
    train = real_cells(val_dataset_dir, "train", progress=False)
    checked = 0
    for ctx in set(metrics["cell_context"]) - {"all"}:
        perts = sorted(set(metrics.loc[(metrics["method"] == "sft") & (metrics["cell_context"] == ctx), "perturbation"]))  # fmt: skip
        loo = leave_one_out_baselines(train, perts, methods=("mean",), context=ctx)["mean"]
        shown = predict_baselines(train, perts, methods=("mean",), context=ctx)["mean"]
        assert not np.allclose(loo.deltas, shown.deltas)
        by_method = metrics[metrics["cell_context"] == ctx].set_index(["method", "perturbation"])
        real_ctx = train[train.obs["cell_context"] == ctx]
        for i, p in enumerate(perts):
            real_delta = _delta(real_ctx, p)
            expected = np.corrcoef(loo.deltas[i], real_delta)[0, 1]
            assert by_method.loc[("mean", p), "pearson_delta"] == pytest.approx(expected, abs=1e-4)
            checked += 1
    assert checked == (metrics["method"] == "sft").sum()
    baselines = metrics[metrics["method"].isin(["mean", "nearest", "ridge", "additive"])]
    assert (baselines["pearson_delta"].dropna() < 0.999).all()
    agg = aggregate_evaluations({"fold0_seed0": out}, n_boot=50)
    assert agg.settings[0].endswith("[TRAIN prompts]")
    (verdict,) = setting_verdicts(agg)
    assert verdict.sentences[0] == FIT_CHECK_NOTE or FIT_CHECK_NOTE in verdict.sentences
    assert verdict.comparisons and not any("held-out" in s for s in verdict.sentences)


def _delta(cells, perturbation):
    X = np.asarray(cells.X.todense()) if hasattr(cells.X, "todense") else np.asarray(cells.X)
    labels = cells.obs["perturbation"].astype(str).to_numpy()
    return X[labels == perturbation].mean(axis=0) - X[labels == "control"].mean(axis=0)
