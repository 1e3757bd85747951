"""Pair selection, hard negatives and leakage checks (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from cellrlhf.data.split_config import LeakageError
from cellrlhf.reward.hard_negatives import (
    HARD_NEGATIVE_KINDS,
    PromptReference,
    build_hard_negatives,
    profile_sentence,
    shuffle_ranks,
)
from cellrlhf.reward.preference_config import PreferenceConfig
from cellrlhf.reward.preference_pairs import answer_with_sentence, select_sampled_pairs
from cellrlhf.reward.preferences import check_no_leakage, held_out_keys

GENES = [f"G{i}" for i in range(12)]


def _reference(
    name: str, up: list[int], *, n_de: int = 2, context: str = "K562"
) -> PromptReference:
    control = np.linspace(2.0, 0.2, len(GENES))
    control[8:] = 0.0  # genes G8..G11 are silent in control
    perturbed = control.copy()
    perturbed[up] += 2.5
    sentence = " ".join(GENES[i] for i in np.argsort(-perturbed, kind="stable")[:6])
    return PromptReference(name, context, perturbed, control, (sentence, sentence), n_de)


def test_profile_sentence_orders_by_profile_and_draws_expressed_genes_only():
    rng = np.random.default_rng(0)
    profile = np.array([0.0, 3.0, 1.0, 0.0, 2.0, 0.5] + [0.0] * 6)
    sentence = profile_sentence(profile, GENES, length=4, rng=rng).split()
    assert len(sentence) == 4
    assert set(sentence) <= {"G1", "G2", "G4", "G5"}
    values = [profile[GENES.index(g)] for g in sentence]
    assert values == sorted(values, reverse=True)
    # never longer than the number of expressed genes
    assert len(profile_sentence(profile, GENES, length=50, rng=rng).split()) == 4
    with pytest.raises(ValueError, match="vocabulary's order"):
        profile_sentence(profile[:5], GENES, length=2, rng=rng)


@given(st.lists(st.sampled_from(GENES), min_size=0, max_size=10), st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_shuffle_ranks_keeps_genes_and_changes_order(words, seed):
    sentence = " ".join(words)
    shuffled = shuffle_ranks(sentence, np.random.default_rng(seed))
    if len(set(words)) < 2:
        assert shuffled is None
    else:
        assert shuffled is not None
        assert sorted(shuffled.split()) == sorted(words)
        assert shuffled.split() != words


def test_hard_negatives_kinds_sources_and_rules():
    target = _reference("A", [8, 9])
    similar = _reference("A_like", [8, 9])  # same response: never an "other" negative
    different = _reference("B", [10, 11])
    other_context = _reference("C", [10, 11], context="HEK293")
    rng = np.random.default_rng(1)
    negatives = build_hard_negatives(
        target, [target, similar, different, other_context], genes=GENES, rng=rng, per_kind=3
    )
    kinds = [n.kind for n in negatives]
    assert sorted(set(kinds)) == sorted(HARD_NEGATIVE_KINDS)
    assert kinds.count("control") == 3 and kinds.count("shuffled") == 3
    for neg in negatives:
        assert neg.chosen in target.reference_sentences  # a real cell of the perturbation
        assert neg.rejected != neg.chosen
        if neg.kind == "other_perturbation":
            # the dissimilar perturbation of the same context, never the look-alike
            assert neg.source == "B"
            assert neg.rejected in different.reference_sentences
        if neg.kind == "control":
            # drawn from the control profile: no gene silent in control
            assert not set(neg.rejected.split()) & {"G8", "G9", "G10", "G11"}
        if neg.kind == "shuffled":
            assert sorted(neg.rejected.split()) == sorted(neg.chosen.split())


def test_hard_negatives_respect_effect_and_kind_selection():
    inert = _reference("NULL", [8], n_de=0)
    negatives = build_hard_negatives(
        inert, [inert], genes=GENES, rng=np.random.default_rng(0), min_de_genes=1
    )
    # no DE genes: the control state is a right answer, so no control negative; no other pert
    assert {n.kind for n in negatives} == {"shuffled"}
    only = build_hard_negatives(
        _reference("A", [8]), [], genes=GENES, rng=np.random.default_rng(0), kinds=["control"]
    )
    assert {n.kind for n in only} == {"control"}
    with pytest.raises(ValueError, match="unknown hard negative kinds"):
        build_hard_negatives(inert, [], genes=GENES, rng=np.random.default_rng(0), kinds=["x"])


def test_hard_negatives_are_seeded():
    target, other = _reference("A", [8, 9]), _reference("B", [10, 11])

    def run(seed):
        return build_hard_negatives(
            target, [other], genes=GENES, rng=np.random.default_rng(seed), per_kind=2
        )

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_select_sampled_pairs_margin_duplicates_and_cap():
    scores = np.array([0.9, 0.5, 0.45, 0.0, 0.9])
    texts = ["A B", "C D", "E F", "G H", "a  b"]  # 0 and 4 are the same answer
    pairs = select_sampled_pairs(
        scores, texts, min_margin=0.1, max_pairs=100, rng=np.random.default_rng(0)
    )
    expected = {(0, 1), (0, 2), (0, 3), (1, 3), (2, 3), (4, 1), (4, 2), (4, 3)}
    assert set(pairs) == expected
    assert all(scores[i] - scores[j] > 0.1 for i, j in pairs)
    capped = select_sampled_pairs(
        scores, texts, min_margin=0.1, max_pairs=3, rng=np.random.default_rng(0)
    )
    assert len(capped) == 3 and set(capped) <= expected
    assert capped == select_sampled_pairs(
        scores, texts, min_margin=0.1, max_pairs=3, rng=np.random.default_rng(0)
    )


def test_answer_with_sentence_keeps_the_model_wording():
    template = "Predicted: <cell> G1 G2 G3 </cell> done"
    assert answer_with_sentence(template, "G7 G8") == "Predicted: <cell> G7 G8 </cell> done"
    assert answer_with_sentence(None, "G7") == "<cell> G7 </cell>"
    assert answer_with_sentence("<cell> G1 G2", "G7") == "<cell> G7 </cell>"  # unclosed template


def _rows(pairs):
    return {"perturbation": [p for p, _ in pairs], "cell_context": [c for _, c in pairs]}


def test_held_out_keys_from_split_manifest():
    train = _rows([("A", "K562"), ("A+B", "K562"), ("C", "K562")])
    test = _rows([("B", "K562"), ("D", "K562")])
    # no split kind (random_cells): test keys absent from train
    assert held_out_keys({}, train, test) == {("B", "K562"), ("D", "K562")}
    # unseen_single: every combination naming a held-out target is held out too
    splits = {"kind": "unseen_single", "test_targets": ["b", "D"]}
    assert held_out_keys(splits, train, test) == {("B", "K562"), ("D", "K562"), ("A+B", "K562")}
    splits = {"kind": "unseen_context", "test_contexts": ["K562"]}
    assert len(held_out_keys(splits, train, test)) == 5


def test_check_no_leakage_catches_prompts_and_hard_negative_sources():
    held = {("B", "K562")}
    ok = Dataset.from_dict(
        {
            "perturbation": ["A", "A"],
            "cell_context": ["K562", "K562"],
            "pair_kind": ["sampled", "other_perturbation"],
            "rejected_source": ["sampled", "C"],
        }
    )
    check_no_leakage(ok, held)
    with pytest.raises(LeakageError, match="held-out"):
        check_no_leakage(ok.map(lambda r: {"perturbation": "B"}), held)
    source = ok.map(
        lambda r: {"rejected_source": "B" if r["pair_kind"] != "sampled" else "sampled"}
    )
    with pytest.raises(LeakageError, match="hard-negative"):
        check_no_leakage(source, held)


def test_unseen_pair_sources_are_checked_by_perturbation_and_context():
    # unseen_pair holds out B in K562 only: B's cells in HEK293 are training data
    train = _rows([("A", "K562"), ("B", "HEK293"), ("A", "HEK293")])
    test = _rows([("B", "K562")])
    held = held_out_keys({"kind": "unseen_pair"}, train, test)
    assert held == {("B", "K562")}
    pairs = Dataset.from_dict(
        {
            "perturbation": ["A"],
            "cell_context": ["K562"],
            "pair_kind": ["other_perturbation"],
            "rejected_source": ["B"],
            "rejected_source_context": ["HEK293"],
        }
    )
    check_no_leakage(pairs, held)
    leaky = pairs.map(lambda r: {"rejected_source_context": "K562"})
    with pytest.raises(LeakageError, match=r"\('B', 'K562'\)"):
        check_no_leakage(leaky, held)


def test_hard_negative_sources_name_their_context():
    target = _reference("A", [8, 9])
    elsewhere = _reference("B", [10, 11], context="HEK293")  # the only dissimilar one
    negatives = build_hard_negatives(
        target, [elsewhere], genes=GENES, rng=np.random.default_rng(0), per_kind=1
    )
    contexts = {n.kind: (n.source, n.source_context) for n in negatives}
    assert contexts == {
        "control": ("control", "K562"),
        "other_perturbation": ("B", "HEK293"),
        "shuffled": ("shuffled", "K562"),
    }


def test_preference_config_validates():
    assert PreferenceConfig(reward_weights='{"distribution": 0.5}').reward_weights == {
        "distribution": 0.5
    }
    with pytest.raises(ValueError, match="at least 2"):
        PreferenceConfig(num_completions=1)
    with pytest.raises(ValueError, match="unknown kinds"):
        PreferenceConfig(hard_negative_kinds=["bogus"])
    with pytest.raises(ValueError, match="temperature"):
        PreferenceConfig(temperature=0.0)


def test_read_preferences_manifest_reads_and_rejects(tmp_path):
    import json

    from cellrlhf.reward.preference_files import read_preferences_manifest

    root = tmp_path / "prefs"
    (root / "pairs").mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"dataset_fingerprint": "abc"}))
    assert read_preferences_manifest(root) == {"dataset_fingerprint": "abc"}

    (root / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_preferences_manifest(root)
    (root / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match="cellrlhf preferences"):
        read_preferences_manifest(root)
    with pytest.raises(FileNotFoundError, match="cellrlhf preferences"):
        read_preferences_manifest(tmp_path / "nothing")
