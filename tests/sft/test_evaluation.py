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


def _random_cell_lm(genes):
    """A random 1-layer Llama with the cell tokenizer: it writes any token, often repeated."""
    from cellrlhf.cell2text.tokenizer import build_cell_tokenizer
    from tests.fixtures.tiny_model import random_llama

    tok = build_cell_tokenizer(GeneVocab(genes), texts=["A cell of type T cell:"] * 4)
    return random_llama(tok), tok


def test_constrained_generation_metrics_beside_unconstrained():
    from cellrlhf.sft.evaluation import GenerationEvaluator

    genes = tuple(f"G{i}" for i in range(12))
    model, tok = _random_cell_lm(genes)
    decoder = ExpressionDecoder(GeneVocab(genes), intercept=2.0, slope=-1.0)
    examples = [
        GenerationExample(prompt="A cell of type T cell: <cell>", reference="<cell> G1 G2 </cell>",
                          task="pretrain")
    ] * 8  # fmt: skip
    kwargs = {"max_new_tokens": 16, "batch_size": 4, "temperature": 1.0, "seed": 0}
    plain = GenerationEvaluator(examples, tok, decoder, **kwargs)(model)
    evaluator = GenerationEvaluator(examples, tok, decoder, constrain_cells=True, **kwargs)
    both = evaluator(model)
    answers = evaluator.last_cell_answers
    assert set(answers) == {"unconstrained", "constrained"}
    assert len(answers["constrained"]) == len(answers["unconstrained"]) == len(examples)
    for answer in answers["constrained"]:
        words = answer.split("</cell>")[0].split()[1:]  # after the "<cell>" the prompt opened
        assert len(set(words)) == len(words) and set(words) <= set(genes), answer
    assert not any(k.startswith("gen_constrained_") for k in plain)
    for key, value in plain.items():  # the unconstrained figures are unchanged (same seed)
        assert both[key] == pytest.approx(value, nan_ok=True), key
    assert plain["gen_valid_gene_fraction"] < 0.9  # a random model writes anything
    assert both["gen_constrained_valid_gene_fraction"] == 1.0
    assert both["gen_constrained_duplicate_fraction"] == 0.0
    assert both["gen_constrained_unknown_fraction"] == 0.0
    assert "gen_constrained_reference_mean_length" not in both


def test_constrained_evaluation_needs_a_decoder():
    from cellrlhf.sft.evaluation import GenerationEvaluator

    _, tok = _random_cell_lm(("A", "B"))
    with pytest.raises(ValueError, match="decoder"):
        GenerationEvaluator([], tok, None, constrain_cells=True)
