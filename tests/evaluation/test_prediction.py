import json

import numpy as np
import pytest

from cellrlhf.evaluation.prediction import PREDICTION_KEY, load_test_prompts, predict

CELLS = 8


@pytest.fixture(scope="module")
def prediction(sim_model_dir, sim_dataset_dir, sim_real_test):
    return predict(
        sim_model_dir,
        sim_dataset_dir,
        real_test=sim_real_test,
        cells_per_prompt=CELLS,
        max_prompts=3,
        seed=7,
        batch_size=12,
        progress=False,
    )


def test_prediction_has_every_prompt_its_cells_and_the_decoded_control(
    prediction, sim_dataset_dir, sim_real_test
):
    from cellrlhf.cell2text.vocab import GeneVocab

    pred = prediction
    assert list(pred.var_names) == list(GeneVocab.load(sim_dataset_dir).genes)
    generated = pred.obs[pred.obs["split_kind"] != "control"]
    rows, indices = load_test_prompts(sim_dataset_dir, max_prompts=3, seed=7)
    assert sorted(set(generated["prompt_index"])) == sorted(indices.tolist())
    assert (generated.groupby("prompt_index").size() == CELLS).all()
    for index, row in zip(indices, rows, strict=True):
        cells = generated[generated["prompt_index"] == index]
        assert set(cells["perturbation"]) == {row["perturbation"]}
        assert set(cells["cell_context"]) == {row["cell_context"]}
        assert set(cells["split_kind"]) == {row["split_kind"]}
    controls = pred.obs[pred.obs["split_kind"] == "control"]
    assert set(controls["perturbation"]) == {"control"}
    assert (controls["prompt_index"] == -1).all()
    real_ctrl = sim_real_test.obs[
        (sim_real_test.obs["perturbation"] == "control")
        & sim_real_test.obs["cell_context"].isin(set(rows["cell_context"]))
    ]
    assert len(controls) == len(real_ctrl)
    for column in (
        "valid",
        "valid_gene_fraction",
        "n_genes",
        "closed",
        "finished",
        "cell_sentence",
    ):
        assert column in pred.obs
    # decoded rows hold exactly the genes decoded from each sentence
    counts = np.diff(pred.X.tocsr().indptr)[: len(generated)]
    assert (counts == generated["n_genes"].to_numpy()).all()
    uns = pred.uns[PREDICTION_KEY]
    assert uns["params"]["cells_per_prompt"] == CELLS and uns["params"]["temperature"] == 1.0
    assert uns["params"]["seed"] == 7 and uns["params"]["simulated"]
    assert uns["params"]["reference"] == "real"  # the default, although the data teach controls
    for key in ("valid_fraction", "duplicate_fraction", "unclosed_fraction", "valid_cell_fraction"):
        assert 0.0 <= uns["validity"][key] <= 1.0
    assert 0.0 < uns["diversity"]["distinct_fraction"] <= 1.0
    assert uns["validity"]["valid_cell_fraction"] == pytest.approx(generated["valid"].mean())


def test_decoded_control_matches_the_builds_decoded_control(prediction, sim_dataset_dir):
    """Where the build used every control cell of a context, the pseudo-bulks agree."""
    manifest = json.loads((sim_dataset_dir / "manifest.json").read_text())
    cap = manifest["config"]["rl"]["max_control_cells"]
    rows, _ = load_test_prompts(sim_dataset_dir, max_prompts=None, seed=0)
    pred = prediction
    checked = 0
    for ctx in sorted(set(pred.obs["cell_context"])):
        ctrl = (pred.obs["split_kind"] == "control") & (pred.obs["cell_context"] == ctx)
        if ctrl.sum() > cap:
            continue
        ours = np.asarray(pred.X[ctrl.to_numpy()].mean(axis=0)).ravel()
        built = np.asarray(
            rows[[c == ctx for c in rows["cell_context"]].index(True)]["decoded_control"]
        )
        np.testing.assert_allclose(ours, built, rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked >= 1


def test_same_seed_same_cells_other_seed_other_cells(
    prediction, sim_model_dir, sim_dataset_dir, sim_real_test
):
    kwargs = dict(
        real_test=sim_real_test,
        cells_per_prompt=CELLS,
        max_prompts=3,
        batch_size=12,
        reference="real",
    )
    again = predict(sim_model_dir, sim_dataset_dir, seed=7, progress=False, **kwargs)
    assert again.obs["cell_sentence"].tolist() == prediction.obs["cell_sentence"].tolist()
    assert (again.X != prediction.X).nnz == 0
    other = predict(sim_model_dir, sim_dataset_dir, seed=8, progress=False, **kwargs)
    assert other.obs["cell_sentence"].tolist() != prediction.obs["cell_sentence"].tolist()


def test_a_model_of_other_genes_is_refused(sim_model_dir, sim_dataset_dir, sim_real_test, tmp_path):
    import shutil

    from cellrlhf.cell2text.vocab import GeneVocab

    other = tmp_path / "model"
    shutil.copytree(sim_model_dir, other)
    genes = list(GeneVocab.load(other).genes)
    GeneVocab([*genes[1:], genes[0]]).save(other)
    with pytest.raises(ValueError, match="different gene vocabulary"):
        predict(other, sim_dataset_dir, real_test=sim_real_test, cells_per_prompt=1, progress=False)


# ---------------------------------------------------------------------------- constrained policies
def _constrained_copy(sim_model_dir, tmp_path):
    """The SFT model as an RL policy trained with constrain_cells (its cellrlhf.json says so)."""
    import shutil

    policy = tmp_path / "grpo"
    shutil.copytree(sim_model_dir, policy)
    info = json.loads((policy / "cellrlhf.json").read_text())
    info.update(stage="grpo", constrain_cells=True)
    (policy / "cellrlhf.json").write_text(json.dumps(info))
    return policy


def test_an_sft_model_is_sampled_unconstrained_by_default(prediction):
    uns = prediction.uns[PREDICTION_KEY]
    assert uns["params"]["constrain_cells"] is False or uns["params"]["constrain_cells"] == 0
    assert uns["params"]["constrain_cells_source"] == "cellrlhf.json"
    assert not uns["validity"]["constrained"] and "unconstrained" not in uns["validity"]


def test_a_constrained_policy_is_sampled_as_trained_with_both_validities(
    prediction, sim_model_dir, sim_dataset_dir, sim_real_test, tmp_path
):
    policy = _constrained_copy(sim_model_dir, tmp_path)
    kwargs = dict(
        real_test=sim_real_test,
        cells_per_prompt=CELLS,
        max_prompts=3,
        batch_size=12,
        reference="real",
    )
    pred = predict(policy, sim_dataset_dir, seed=7, progress=False, **kwargs)
    uns = pred.uns[PREDICTION_KEY]
    assert (
        uns["params"]["constrain_cells"]
        and uns["params"]["constrain_cells_source"] == "cellrlhf.json"
    )
    generated = pred.obs[pred.obs["split_kind"] != "control"]
    assert generated["valid"].all() and generated["finished"].all()  # one valid cell, ended
    assert uns["validity"]["constrained"] and uns["validity"]["valid_cell_fraction"] == 1.0
    # the model's own validity, unconstrained: the SFT model's figure (same seed, same prompts)
    free = uns["validity"]["unconstrained"]
    assert free["cells_per_prompt"] == CELLS
    sft = prediction.uns[PREDICTION_KEY]["validity"]
    assert free["valid_cell_fraction"] == pytest.approx(sft["valid_cell_fraction"])
    # overridden: the policy's own samples, as the SFT model's
    own = predict(policy, sim_dataset_dir, seed=7, progress=False, constrain_cells=False, **kwargs)
    params = own.uns[PREDICTION_KEY]["params"]
    assert not params["constrain_cells"] and params["constrain_cells_source"] == "argument"
    assert own.obs["cell_sentence"].tolist() == prediction.obs["cell_sentence"].tolist()
    # and asked for: an SFT model sampled under the grammar
    asked = predict(sim_model_dir, sim_dataset_dir, seed=7, progress=False, constrain_cells=True,
                    unconstrained_validity_cells=0, **kwargs)  # fmt: skip
    uns = asked.uns[PREDICTION_KEY]
    assert uns["params"]["constrain_cells_source"] == "argument"
    assert uns["validity"]["valid_cell_fraction"] == 1.0 and "unconstrained" not in uns["validity"]


def test_auto_reference_takes_the_models_own_control_answers(sim_model_dir, sim_dataset_dir):
    """The dataset teaches control answers, so ``auto`` samples the model's answers to each
    prompt's control twin (no real cells needed) and labels them as the control rows."""
    pred = predict(
        sim_model_dir,
        sim_dataset_dir,
        cells_per_prompt=CELLS,
        max_prompts=3,
        seed=7,
        batch_size=12,
        progress=False,
        reference="auto",
    )
    params = pred.uns[PREDICTION_KEY]["params"]
    assert params["reference"] == "model"
    assert params["reference_source"] == "dataset teaches control answers"
    rows, _ = load_test_prompts(sim_dataset_dir, max_prompts=3, seed=7)
    controls = pred.obs[pred.obs["split_kind"] == "control"]
    per_context = controls.groupby("cell_context").size()
    assert sorted(per_context.index) == sorted(set(rows["cell_context"]))
    assert (per_context == 2 * CELLS).all()
    assert set(controls["perturbation"]) == {"control"}
    assert controls.index.str.startswith("model_control_").all()
    counts = np.diff(pred.X.tocsr().indptr)[-len(controls) :]
    assert (counts == controls["n_genes"].to_numpy()).all()
    assert "valid_cell_fraction" in pred.uns[PREDICTION_KEY]["validity"]["reference"]


def test_each_control_twin_differs_from_its_prompt_only_in_the_perturbation(sim_dataset_dir):
    rows, _ = load_test_prompts(sim_dataset_dir, max_prompts=None, seed=0)
    for row in rows:
        prompt, twin = row["prompt"], row["control_prompt"]
        assert [m["role"] for m in prompt] == [m["role"] for m in twin]
        assert prompt[:-1] == twin[:-1]
        assert "<pert> <control> </pert>" in twin[-1]["content"]
        targets = row["perturbation"].split("+")
        markup = "<pert> " + " ".join(targets) + " </pert>"
        assert twin[-1]["content"] == prompt[-1]["content"].replace(
            markup, "<pert> <control> </pert>"
        )


def test_reference_choice_is_checked(sim_model_dir, sim_dataset_dir):
    from cellrlhf.evaluation.prediction import _reference

    rows, _ = load_test_prompts(sim_dataset_dir, max_prompts=None, seed=0)
    manifest = json.loads((sim_dataset_dir / "manifest.json").read_text())
    assert _reference("auto", rows, manifest)[0] == "model"
    assert _reference("real", rows, manifest) == ("real", "argument")
    untaught = json.loads(json.dumps(manifest))
    untaught["config"]["sft"]["tasks"]["perturbation_response"]["control_fraction"] = 0.0
    assert _reference("auto", rows, untaught)[0] == "real"
    old = rows.remove_columns("control_prompt")
    assert _reference("auto", old, manifest)[0] == "real"
    with pytest.raises(ValueError, match="rebuild the dataset"):
        _reference("model", old, manifest)
    with pytest.raises(ValueError, match="choose one of"):
        _reference("mine", rows, manifest)
