"""The Python API on a tiny model trained in the session: structured, valid, deterministic."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from tests.fixtures.tiny_cell_model import TARGETS, UNKNOWN_TARGET


@pytest.fixture(scope="module")
def few(pbmc):
    return pbmc[[0, 50, 120, 300, 450, 650]]


def test_tiny_model_learned_something(tiny_model_dir):
    info = json.loads((tiny_model_dir / "cellrlhf.json").read_text())
    assert info["final_loss"] < 0.5 * info["first_loss"]


def test_annotate_returns_labels_of_the_training_data(lm, few, pbmc):
    table = lm.annotate(few)
    assert list(table.index) == list(few.obs_names)
    assert list(table.columns) == ["label", "score", "answer"]
    known = set(pbmc.obs["cell_type"].astype(str))
    assert lm.cell_contexts == sorted(known)  # read from the data manifest
    # free generation: the label is what the tiny model answered, parsed; most answers are
    # training labels (a 2-layer model trained for seconds still garbles some; pass
    # candidates= for answers constrained to known labels, tested below)
    assert table["label"].isin(known).mean() >= 0.5, table
    assert ((table["score"] >= 0) & (table["score"] <= 1)).all()


def test_annotate_with_candidates_gives_probabilities(lm, few):
    candidates = ["CD19+ B", "CD14+ Monocyte", "Dendritic"]
    table = lm.annotate(few, candidates=candidates)
    probs = table[[f"p({c})" for c in candidates]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert list(table["label"]) == [candidates[i] for i in probs.argmax(axis=1)]
    np.testing.assert_allclose(table["score"], probs.max(axis=1))


def test_batched_answers_equal_one_at_a_time(lm, few):
    batched = lm.annotate(few, batch_size=6)
    single = lm.annotate(few, batch_size=1)
    assert list(batched["answer"]) == list(single["answer"])
    np.testing.assert_allclose(batched["score"], single["score"], rtol=1e-4, atol=1e-6)


def test_cell_given_as_row_mapping_or_sentence(lm, pbmc):
    row = pbmc[3:4]
    sentence = lm.encode(row).sentences[0]
    by_row = lm.annotate(row)["answer"].iloc[0]
    assert lm.annotate(sentence)["answer"].iloc[0] == by_row
    assert lm.annotate(sentence.split())["answer"].iloc[0] == by_row
    genes = sentence.split()
    mapping = {g: float(len(genes) - i) for i, g in enumerate(genes)}  # same ranking
    assert lm.encode(mapping).sentences[0] == sentence
    assert lm.annotate(mapping)["answer"].iloc[0] == by_row


def test_predict_perturbation_returns_valid_anndata(lm, few):
    pred = lm.predict_perturbation(few[:3], TARGETS[0], cell_context="CD14+ Monocyte")
    adata = pred.adata
    assert adata.shape == (3, len(lm.vocab))
    assert list(adata.var_names) == list(lm.vocab.genes)
    assert sp.issparse(adata.X) and adata.X.dtype == np.float32 and adata.X.min() >= 0
    assert adata.layers["control"].shape == adata.shape
    assert list(adata.obs["input_cell"]) == list(few.obs_names[:3])
    assert (adata.obs["perturbation"] == TARGETS[0]).all()
    assert adata.uns["cellrlhf_prediction"]["params"]["perturbation_type"] == "CRISPRa"
    # the model writes gene words in a closed cell (repeats are what a tiny model still does)
    assert pred.report.unknown_fraction < 0.2
    assert (adata.obs["n_genes"] >= 3).all()
    # pooled over the generated cells: distinct genes / all generated words
    assert pred.valid_fraction == pytest.approx(
        float(adata.obs["n_genes"].sum() / np.sum(pred.report.n_words))
    )
    # control is the decoded input cell: the same encode -> decode round trip
    control, _ = lm.decoder.decode(lm.encode(few[:3]).sentences)
    np.testing.assert_allclose(adata.layers["control"].toarray(), control.toarray())
    # top genes: sorted, signed, consistent with var
    assert (pred.top_up["delta"] > 0).all() and (pred.top_down["delta"] < 0).all()
    assert list(pred.top_up["delta"]) == sorted(pred.top_up["delta"], reverse=True)
    np.testing.assert_allclose(
        adata.var["delta"], adata.var["mean_predicted"] - adata.var["mean_control"]
    )


def test_model_learned_the_synthetic_crispra_rule(lm, few):
    pred = lm.predict_perturbation(few, TARGETS[0], cell_context="CD14+ Monocyte")
    first_genes = [s.split()[0] for s in pred.adata.obs["predicted_sentence"] if s]
    assert first_genes.count(TARGETS[0]) >= 2  # the target goes to the top of the sentence
    assert TARGETS[0] in list(pred.top_up["gene"].head(3))


def test_predict_perturbation_samples_and_writes_h5ad(lm, few, tmp_path):
    import anndata as ad

    pred = lm.predict_perturbation(
        few[:2], [TARGETS[1]], cell_context="CD19+ B", n_samples=3, seed=1
    )
    assert pred.adata.n_obs == 6
    assert pred.adata.obs["sample"].tolist() == [0, 1, 2, 0, 1, 2]
    again = lm.predict_perturbation(
        few[:2], [TARGETS[1]], cell_context="CD19+ B", n_samples=3, seed=1
    )
    assert pred.answers == again.answers  # seeded sampling
    path = pred.write(tmp_path / "pred.h5ad")
    back = ad.read_h5ad(path)
    assert back.shape == pred.adata.shape
    np.testing.assert_allclose(back.X.toarray(), pred.adata.X.toarray())
    assert back.uns["cellrlhf_prediction"]["params"]["seed"] == 1


def test_unknown_target_is_written_unk_pert(lm, few, caplog):
    with caplog.at_level(logging.WARNING):
        pred = lm.predict_perturbation(few[:1], UNKNOWN_TARGET, cell_context="Dendritic")
    assert f"no word for target(s) {UNKNOWN_TARGET}" in caplog.text
    assert pred.adata.uns["cellrlhf_prediction"]["params"]["unknown_targets"] == [UNKNOWN_TARGET]
    assert lm.has_word(TARGETS[0]) and not lm.has_word(UNKNOWN_TARGET)


def test_a_held_out_unmeasured_target_is_warned_about(lm, few, caplog, monkeypatch):
    target = TARGETS[0]  # a target with a word; the manifest below holds it out, unmeasured
    split = {"kind": "unseen_single", "test_targets": [target], "validation_perturbations": []}
    manifest = {**lm.data_manifest, "split": split, "perturbation_targets_unmeasured": [target]}
    monkeypatch.setattr(lm, "data_manifest", manifest)
    assert lm.blind_targets == {target.upper()}
    with caplog.at_level(logging.WARNING):
        lm.predict_perturbation(few[:1], target, cell_context="Dendritic")
    assert f"target(s) {target} were held out of this model's training data" in caplog.text
    # measured (co-expression learned in pretraining), or another split kind: no warning
    monkeypatch.setattr(lm, "data_manifest", {**manifest, "perturbation_targets_unmeasured": []})
    assert lm.blind_targets == set()
    monkeypatch.setattr(
        lm, "data_manifest", {**manifest, "split": {**split, "kind": "unseen_pair"}}
    )
    assert lm.blind_targets == set()


def test_missing_context_is_annotated_first(lm, few):
    pred = lm.predict_perturbation(few[:2], TARGETS[2])
    expected = lm.annotate(few[:2])["label"].tolist()
    assert pred.adata.obs["cell_context"].tolist() == expected


def test_generate_cells(lm):
    cells = lm.generate_cells("CD14+ Monocyte", n=5, seed=3)
    assert cells.shape == (5, len(lm.vocab))
    assert (cells.obs["cell_type"] == "CD14+ Monocyte").all()
    assert cells.obs["valid_fraction"].mean() > 0.5  # sampled cells are mostly distinct genes
    assert cells.obs["n_genes"].mean() >= 3
    assert len(set(cells.obs["cell_sentence"])) > 1  # sampled, not one cell repeated
    same = lm.generate_cells("CD14+ Monocyte", n=5, seed=3)
    assert list(same.obs["cell_sentence"]) == list(cells.obs["cell_sentence"])


def test_chat_streams_the_same_answer(lm, pbmc):
    messages = [
        {"role": "user", "content": lm.cell_question(pbmc[10:11], "What cell type is this cell?")}
    ]
    full = lm.chat(messages, max_new_tokens=24)
    pieces = list(lm.chat(messages, stream=True, max_new_tokens=24))
    assert len(pieces) >= 1
    assert "".join(pieces).strip() == full
    assert full  # a non-empty answer


def test_chat_rejects_malformed_messages(lm):
    with pytest.raises(ValueError, match="role"):
        lm.chat([{"role": "robot", "content": "hi"}])
    with pytest.raises(ValueError, match="must end with a user"):
        lm.chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])


def test_identify_and_effect_return_structures(lm, few):
    table = lm.identify_perturbation(few[:2], cell_context="Dendritic")
    assert list(table.columns) == ["perturbation", "score", "answer"]
    effect = lm.perturbation_effect(TARGETS[0], cell_context="Dendritic", max_new_tokens=16)
    assert set(effect) == {"up", "down", "answer"}


def test_unknown_genes_are_a_clear_error(lm):
    from cellrlhf.chat import UnknownGenesError

    with pytest.raises(
        UnknownGenesError, match=r"not in the model's vocabulary of 765 genes: NOTAGENE"
    ):
        lm.encode("CD3E NOTAGENE")
    with pytest.raises(UnknownGenesError, match=r"Did you mean: CD3EE -> CD3E"):
        lm.encode(["CD3EE"])
    with pytest.raises(ValueError, match="repeated"):
        lm.encode("CD3E LYZ cd3e")


def test_save_load_round_trip_gives_identical_outputs(lm, few, tmp_path):
    from cellrlhf.chat import CellLM

    saved = lm.save_pretrained(tmp_path / "copy")
    assert (saved / "model.safetensors").is_file() and not list(saved.glob("*.bin"))
    for name in (
        "gene_vocab.json",
        "expression_decoder.json",
        "cellrlhf.json",
        "data_manifest.json",
    ):
        assert (saved / name).is_file()
    again = CellLM.from_pretrained(saved)
    a = lm.annotate(few)
    b = again.annotate(few)
    assert list(a["answer"]) == list(b["answer"])
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-5)
    pa = lm.predict_perturbation(few[:2], TARGETS[0], cell_context="Dendritic")
    pb = again.predict_perturbation(few[:2], TARGETS[0], cell_context="Dendritic")
    assert pa.answers == pb.answers


def test_pickle_weights_are_refused(tiny_model_dir, tmp_path):
    from cellrlhf.chat import CellLM
    from cellrlhf.sft.model_files import UnsafeModelError

    d = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, d)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(UnsafeModelError, match="pickle"):
        CellLM.from_pretrained(d)


def test_remote_code_is_not_run(tiny_model_dir, tmp_path):
    from cellrlhf.chat import CellLM

    d = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, d)
    marker = tmp_path / "code_ran"
    (d / "modeling_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaForCausalLM as EvilForCausalLM\n"
    )
    (d / "configuration_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
    )
    config = json.loads((d / "config.json").read_text())
    config["model_type"] = "evil"
    config["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
    }
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        CellLM.from_pretrained(d)
    assert not marker.exists()


def test_missing_cell2text_files_are_named(tiny_model_dir, tmp_path):
    from cellrlhf.chat import CellLM

    d = tmp_path / "novocab"
    shutil.copytree(tiny_model_dir, d)
    (d / "expression_decoder.json").unlink()
    with pytest.raises(FileNotFoundError, match="expression_decoder.json"):
        CellLM.from_pretrained(d)


def test_reward_model_is_refused_with_a_pointer_to_the_policy(tiny_model_dir, tmp_path):
    from cellrlhf.chat import CellLM

    d = tmp_path / "rm"
    shutil.copytree(tiny_model_dir, d)
    config = json.loads((d / "config.json").read_text())
    config["architectures"] = ["LlamaForSequenceClassification"]
    (d / "config.json").write_text(json.dumps(config))
    info = json.loads((d / "cellrlhf.json").read_text())
    info.update(stage="reward", sft_model="runs/sft")
    (d / "cellrlhf.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"reward model .* trained from runs/sft"):
        CellLM.from_pretrained(d)
