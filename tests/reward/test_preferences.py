"""The preference builder end to end: sampling from a tiny SFT model, scoring, pairing, saving."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import rm_fixtures
from datasets import concatenate_datasets, load_from_disk
from rm_fixtures import (
    PREFERENCE_TEST_SETTINGS,
    PREFERENCES_TINY_CONFIG,
    TEST_TARGETS,
    TRAIN_TARGETS,
    build_preferences_for_tests,
    prompt_messages,
)
from trl.data_utils import is_conversational

from cellrlhf.cell2text.markup import extract_cell
from cellrlhf.data.split_config import LeakageError
from cellrlhf.reward.preference_files import load_preference_pairs, load_preferences
from cellrlhf.reward.preference_pairs import PAIR_KINDS

# the shared session fixtures (tests/reward/rm_fixtures.py)
rm_dataset_dir = rm_fixtures.rm_dataset_dir
rm_preferences_dir = rm_fixtures.rm_preferences_dir
rm_sft_dir = rm_fixtures.rm_sft_dir


def test_pairs_are_trl_preference_data_with_scores(rm_preferences_dir):
    pairs = load_preference_pairs(rm_preferences_dir)
    assert set(pairs) == {"train", "test"}
    train = pairs["train"]
    for column in ("prompt", "chosen", "rejected", "score_chosen", "score_rejected", "pair_kind"):
        assert column in train.column_names
    assert set(train["pair_kind"]) == set(PAIR_KINDS)  # sampled pairs and every hard negative
    row = train[0]
    assert is_conversational(row)
    assert row["prompt"] == prompt_messages(row["perturbation"])
    assert (
        [m["role"] for m in row["chosen"]] == ["assistant"] == [m["role"] for m in row["rejected"]]
    )
    scores = np.array(list(train["score_chosen"]) + list(train["score_rejected"]))
    assert np.all(np.isfinite(scores))

    sampled = train.filter(lambda k: k == "sampled", input_columns="pair_kind")
    margin = np.array(sampled["score_chosen"]) - np.array(sampled["score_rejected"])
    assert np.all(margin > PREFERENCE_TEST_SETTINGS["min_score_margin"])
    per_prompt = np.unique(sampled["prompt_id"], return_counts=True)[1]
    assert per_prompt.max() <= PREFERENCE_TEST_SETTINGS["max_pairs_per_prompt"]

    # hard negatives carry real cells and are written in the model's own wording
    hard = train.filter(lambda k: k != "sampled", input_columns="pair_kind")
    for r in hard:
        chosen = extract_cell(r["chosen"][0]["content"])
        rejected = extract_cell(r["rejected"][0]["content"])
        assert chosen.found and chosen.closed and rejected.found and rejected.closed
        assert chosen.sentence != rejected.sentence
        if r["pair_kind"] == "shuffled":
            assert sorted(chosen.sentence.split()) == sorted(rejected.sentence.split())
    # the group-aware score agrees with the construction of most hard negatives
    assert np.mean(np.array(hard["score_chosen"]) > np.array(hard["score_rejected"])) > 0.8


def test_completions_and_manifest(rm_preferences_dir):
    manifest = json.loads((rm_preferences_dir / "manifest.json").read_text())
    pairs, completions = load_preferences(rm_preferences_dir, "test")
    n = PREFERENCE_TEST_SETTINGS["num_completions"]
    assert len(completions) == n * len(TEST_TARGETS)
    assert set(np.unique(completions["prompt_id"], return_counts=True)[1]) == {n}
    assert manifest["counts"]["test"]["sampled"] == sum(k == "sampled" for k in pairs["pair_kind"])
    assert manifest["simulated"] is True
    assert manifest["held_out"] == [f"{t} | K562" for t in TEST_TARGETS]
    assert (rm_preferences_dir / "preferences.png").stat().st_size > 0
    budget = manifest["answer_budget"]  # the sampling budget, checked against the real cells
    assert budget["source"] == "configured"
    assert budget["budget"] == PREFERENCE_TEST_SETTINGS.get("max_new_tokens", 256)
    assert budget["n_cells"] > 0 and budget["n_cut"] == 0
    # a completion's score is its credit in the group: the group mean is the jackknife estimate
    train = load_preferences(rm_preferences_dir, "train")[1]
    assert np.std(train["score"]) > 0


def test_no_held_out_perturbation_in_training_pairs(rm_preferences_dir):
    pairs = load_preference_pairs(rm_preferences_dir)
    train, test = pairs["train"], pairs["test"]
    assert set(train["perturbation"]) == set(TRAIN_TARGETS)
    assert set(test["perturbation"]) == set(TEST_TARGETS)
    sources = {
        s
        for s, k in zip(train["rejected_source"], train["pair_kind"], strict=True)
        if k == "other_perturbation"
    }
    assert sources and sources <= set(TRAIN_TARGETS)
    # every rejected answer names the context of its cells (one context here)
    assert set(train["rejected_source_context"]) == {"K562"}
    texts = [
        m["content"] for col in ("prompt", "chosen", "rejected") for row in train[col] for m in row
    ]
    assert not any(t in text.split() for t in TEST_TARGETS for text in texts)


def test_builder_is_deterministic(rm_preferences_dir, rm_sft_dir, rm_dataset_dir, tmp_path):
    """Same config -> identical pairs and completions; the CLI runs the same code."""
    from cellrlhf.cli import main as cellrlhf_main

    args = ["preferences", "--config", str(PREFERENCES_TINY_CONFIG)]
    args += ["--model_name_or_path", str(rm_sft_dir), "--dataset_dir", str(rm_dataset_dir)]
    assert cellrlhf_main([*args, "--output_dir", str(tmp_path / "again")]) == 0
    for name in ("pairs", "completions"):
        first = load_from_disk(str(rm_preferences_dir / name))
        second = load_from_disk(str(tmp_path / "again" / name))
        for split in first:
            assert first[split].to_list() == second[split].to_list()


def test_another_seed_gives_other_samples(rm_preferences_dir, rm_sft_dir, rm_dataset_dir, tmp_path):
    build_preferences_for_tests(
        rm_sft_dir, rm_dataset_dir, tmp_path / "seed1", seed=1, test_split="", max_prompts=2
    )
    other = load_from_disk(str(tmp_path / "seed1" / "completions"))["train"]
    first = load_from_disk(str(rm_preferences_dir / "completions"))["train"]
    assert [c[0]["content"] for c in other["completion"]] != [
        c[0]["content"] for c in first["completion"][: len(other)]
    ]


def test_a_budget_that_cuts_the_cells_is_warned(rm_sft_dir, rm_dataset_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="cellrlhf.cell2text.answer_budget"):
        manifest = build_preferences_for_tests(
            rm_sft_dir, rm_dataset_dir, tmp_path / "short", max_new_tokens=3, test_split="",
            max_prompts=2,
        )
    budget = manifest["answer_budget"]
    assert budget["budget"] == 3 and budget["n_cut"] == budget["n_cells"] > 0
    assert "preferences: an answer budget of 3 tokens cuts" in caplog.text
    assert "set max_new_tokens to it" in caplog.text


def test_the_specific_term_scores_the_same_samples_differently(
    rm_preferences_dir, rm_sft_dir, rm_dataset_dir, tmp_path
):
    """`reward_weights: {specific: 1}`: the group reward of the preference scores also weighs the
    change relative to the mean training change of the context (as GRPO's `specific_weight`);
    the same sampled completions, scores higher or lower by exactly that term."""
    kwargs = {"test_split": "", "max_prompts": 2}
    build_preferences_for_tests(rm_sft_dir, rm_dataset_dir, tmp_path / "plain", **kwargs)
    build_preferences_for_tests(
        rm_sft_dir, rm_dataset_dir, tmp_path / "specific",
        reward_weights={"specific": 1.0}, **kwargs,
    )
    plain = load_from_disk(str(tmp_path / "plain" / "completions"))["train"]
    specific = load_from_disk(str(tmp_path / "specific" / "completions"))["train"]
    assert plain["completion"] == specific["completion"]
    term = np.asarray(specific["specific"])
    np.testing.assert_allclose(plain["specific"], term)  # computed at weight 0 too, not added
    assert np.abs(term).max() > 0
    np.testing.assert_allclose(np.asarray(specific["score"]) - plain["score"], term, atol=1e-9)


def test_leaked_training_split_is_refused(rm_sft_dir, rm_dataset_dir, tmp_path):
    """A held-out perturbation in the rl train split (a broken dataset) stops the build."""
    poisoned = tmp_path / "poisoned"
    shutil.copytree(rm_dataset_dir, poisoned)
    rl = load_from_disk(str(rm_dataset_dir / "rl"))
    rl["train"] = concatenate_datasets([rl["train"], rl["test"].select([0])])
    shutil.rmtree(poisoned / "rl")
    rl.save_to_disk(str(poisoned / "rl"))
    with pytest.raises(LeakageError, match="T7"):
        build_preferences_for_tests(
            rm_sft_dir,
            poisoned,
            tmp_path / "out",
            num_completions=2,
            max_new_tokens=4,
            hard_negative_kinds=[],
        )
    assert not (tmp_path / "out" / "pairs").exists()


def test_missing_inputs_give_clear_errors(rm_sft_dir, tmp_path, capsys):
    from cellrlhf.cli import main as cellrlhf_main

    def run(dataset_dir):
        return cellrlhf_main(
            ["preferences", "--model_name_or_path", str(rm_sft_dir)]
            + ["--dataset_dir", str(dataset_dir), "--output_dir", str(tmp_path / "out")]
        )

    assert run(tmp_path) == 2
    assert "not a built cellrlhf dataset" in capsys.readouterr().err
    # a built dataset (manifest, splits) without the rl/ prompt set
    built = tmp_path / "data"
    built.mkdir()
    (built / "manifest.json").write_text('{"format": "cellrlhf.dataset"}')
    (built / "splits.json").write_text("{}")
    assert run(built) == 2
    assert "no rl/ prompt set" in capsys.readouterr().err


def _valid_cell_fraction(completions, genes) -> float:
    valid = []
    for c in completions["completion"]:
        text = c[0]["content"]
        cell = extract_cell(text)
        words = cell.sentence.split() if cell.found else []
        valid.append(
            cell.found
            and cell.closed
            and text.strip().endswith("</cell>")
            and len(words) > 0
            and len(set(words)) == len(words)
            and set(words) <= genes
        )
    return float(np.mean(valid))


def test_constrained_preferences_sample_valid_cells(
    rm_preferences_dir, rm_sft_dir, rm_dataset_dir, tmp_path
):
    """`constrain_cells`: every sampled answer is one cell of known, distinct genes (what a
    constrained RL policy samples); the free sample of the same tiny model is not."""
    from cellrlhf.data.layout import open_dataset_dir

    genes = set(open_dataset_dir(rm_dataset_dir).vocab().genes)
    manifest = build_preferences_for_tests(
        rm_sft_dir,
        rm_dataset_dir,
        tmp_path / "constrained",
        constrain_cells=True,
        test_split="",
        max_prompts=2,
    )
    assert manifest["config"]["constrain_cells"] is True
    constrained = load_from_disk(str(tmp_path / "constrained" / "completions"))["train"]
    free = load_from_disk(str(rm_preferences_dir / "completions"))["train"]
    assert _valid_cell_fraction(constrained, genes) == 1.0
    assert _valid_cell_fraction(free, genes) < 1.0
