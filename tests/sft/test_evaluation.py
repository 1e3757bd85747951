"""Generation metrics: exact figures on small inputs."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

from cellrlhf.cell2text.decoder import ExpressionDecoder
from cellrlhf.cell2text.vocab import GeneVocab
from cellrlhf.sft.evaluation import (
    GenerationExample,
    cell_answer_metrics,
    fidelity_references,
    normalize_answer,
    pretrain_generation_examples,
    sft_generation_examples,
    text_answer_metrics,
)
from cellrlhf.sft.trainer import perplexity


@pytest.fixture
def decoder():
    return ExpressionDecoder(GeneVocab(("A", "B", "C", "D")), intercept=2.0, slope=-1.0)


def test_normalize_answer():
    assert normalize_answer("  T  cell. ") == "t cell"
    assert normalize_answer("K562") == normalize_answer("k562!")
    assert normalize_answer("CD4+ T cell") == "cd4+ t cell"


def test_text_accuracy_per_task():
    examples = [
        GenerationExample(prompt=(), reference="K562", task="cell_annotation"),
        GenerationExample(prompt=(), reference="HEK293", task="cell_annotation"),
        GenerationExample(
            prompt=(), reference="<pert> KLF1 </pert>", task="perturbation_identification"
        ),
    ]
    metrics = text_answer_metrics(examples, ["k562.", "K562", "<pert> KLF1 </pert>"])
    assert metrics == {
        "gen_cell_annotation_accuracy": 0.5,
        "gen_perturbation_identification_accuracy": 1.0,
        "gen_text_accuracy": pytest.approx(2 / 3),
    }


def test_cell_validity_figures(decoder):
    examples = [
        GenerationExample(prompt=(), reference="<cell> A B C </cell>", task="cell_generation")
    ] * 3
    answers = ["<cell> A B B X </cell>", "<cell> C D", "<cell> </cell>"]
    metrics = cell_answer_metrics(examples, answers, decoder)
    # words: 4 + 2 + 0 = 6; valid A B C D = 4; duplicate B = 1; unknown X = 1
    assert metrics["gen_valid_gene_fraction"] == pytest.approx(4 / 6)
    assert metrics["gen_duplicate_fraction"] == pytest.approx(1 / 6)
    assert metrics["gen_unknown_fraction"] == pytest.approx(1 / 6)
    assert metrics["gen_empty_fraction"] == pytest.approx(1 / 3)
    assert metrics["gen_unclosed_fraction"] == pytest.approx(1 / 3)
    assert metrics["gen_mean_length"] == pytest.approx(2.0)
    assert metrics["gen_reference_mean_length"] == pytest.approx(3.0)
    assert metrics["gen_distinct_fraction"] == pytest.approx(1.0)


def test_sft_slice_is_seeded_and_splits_off_the_answer():
    rows = {
        "messages": [
            [
                {"role": "system", "content": "s"},
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": f"a{i}"},
            ]
            for i in range(10)
        ],
        "task": ["t"] * 10,
        "perturbation": [""] * 10,
        "cell_context": ["K562"] * 10,
    }
    data = Dataset.from_dict(rows)
    a = sft_generation_examples(data, 4, seed=3)
    assert a == sft_generation_examples(data, 4, seed=3)
    assert len(a) == 4 and len({e.reference for e in a}) == 4
    for e in a:
        assert e.prompt[-1]["content"] == "q" + e.reference[1:]
        assert all(m["role"] != "assistant" for m in e.prompt)


def test_pretrain_prompts_end_at_the_cell_marker():
    data = Dataset.from_dict({"text": ["K562 control <cell> A B </cell>", "A B C"]})
    examples = pretrain_generation_examples(data, 2, seed=0)
    assert [e.prompt for e in examples] == ["K562 control <cell>", ""]
    assert [e.reference for e in examples] == ["<cell> A B </cell>", "A B C"]


def test_fidelity_references_from_rl_rows():
    rl = Dataset.from_dict(
        {
            "perturbation": ["KLF1"],
            "cell_context": ["K562"],
            "reference_perturbed": [[1.0, 2.0]],
            "reference_control": [[1.0, 1.0]],
            "decoded_control": [[0.5, 0.5]],
        }
    )
    refs = fidelity_references({"train": rl})
    np.testing.assert_array_equal(refs[("KLF1", "K562")].perturbed, [1.0, 2.0])
    assert fidelity_references(None) == {}


def test_perplexity_is_exp_loss_and_finite():
    assert perplexity(np.log(7.0)) == pytest.approx(7.0)
    assert np.isfinite(perplexity(1e6))
