"""Opt-in constrained decoding of cells in CellLM and the chat CLIs."""

from __future__ import annotations

import pytest

from cellrlhf.cell2text.markup import extract_cell


def _cell_problems(answers, genes) -> int:
    """Cells with a repeated gene or a word that is not a measured gene."""
    known = set(genes)
    bad = 0
    for answer in answers:
        words = extract_cell(answer).sentence.split()
        bad += len(set(words)) < len(words) or not set(words) <= known
    return bad


def test_generate_cells_constrained_are_valid_and_unique(lm):
    kwargs = {"n": 24, "temperature": 1.5, "seed": 3, "max_new_tokens": 40}
    free = lm.generate_cells("CD14+ Monocyte", **kwargs)
    held = lm.generate_cells("CD14+ Monocyte", constrain_cells=True, **kwargs)
    # the constraint acts inside <cell> ... </cell>: a hot sample that skips the opening marker
    # is free text (closed cells are the ones that opened)
    closed_free = free.obs["cell_sentence"][free.obs["closed"].to_numpy(bool)]
    closed_held = held.obs["cell_sentence"][held.obs["closed"].to_numpy(bool)]
    assert len(closed_held) >= 12
    # hot sampling of the tiny model repeats genes or writes non-genes in some cells...
    assert _cell_problems(closed_free, lm.genes) > 0
    # ...never with the constraint
    assert _cell_problems(closed_held, lm.genes) == 0
    closed = held.obs["closed"].to_numpy(bool)
    assert (held.obs["valid_fraction"][closed] == 1.0).all()
    assert held.uns["cellrlhf_generation"]["params"]["constrain_cells"] is True
    assert free.uns["cellrlhf_generation"]["params"]["constrain_cells"] is False


def test_predict_perturbation_and_chat_honour_the_default(lm, pbmc):
    from cellrlhf.chat import CellLM

    held = CellLM(lm.model, lm.tokenizer, lm.vocab, lm.decoder, info=lm.info,
                  data_manifest=lm.data_manifest, constrain_cells=True)  # fmt: skip
    pred = held.predict_perturbation(pbmc[:4], "SPI1", cell_context="CD14+ Monocyte",
                                     n_samples=4, temperature=1.5, seed=1)  # fmt: skip
    assert pred.adata.uns["cellrlhf_prediction"]["params"]["constrain_cells"] is True
    opened = [extract_cell(a).found for a in pred.answers]
    assert sum(opened) >= 8
    assert (pred.report.duplicate_fractions[opened] == 0.0).all()
    assert (pred.report.valid_fractions[opened] == 1.0).all()
    conversation = [{"role": "user", "content": held.prompts.generation("CD19+ B")[-1]["content"]}]
    text = held.chat(conversation, temperature=1.5, seed=2, max_new_tokens=40)
    streamed = "".join(held.chat(conversation, temperature=1.5, seed=2, max_new_tokens=40,
                                 stream=True))  # fmt: skip
    assert " ".join(streamed.split()) == " ".join(text.split())
    assert not extract_cell(text).found or _cell_problems([text], lm.genes) == 0
    # per call override
    off = held.generate_cells("CD19+ B", n=2, constrain_cells=False)
    assert off.uns["cellrlhf_generation"]["params"]["constrain_cells"] is False


def test_cell_lm_needs_gene_tokens(lm):
    from cellrlhf.cell2text.tokenizer import genes_as_text_tokenizer
    from cellrlhf.chat import CellLM
    from tests.cell2text.test_tokenizer import _byte_level_base

    text_tok = genes_as_text_tokenizer(_byte_level_base(), add_markup_tokens=True)
    with pytest.raises(ValueError, match="genes_as_text"):
        CellLM(lm.model, text_tok, lm.vocab, lm.decoder, constrain_cells=True)


def test_cli_flags(tiny_model_dir):
    from cellrlhf.chat import repl

    (options,) = repl.make_parser().parse_args_and_config(
        ["--model", str(tiny_model_dir), "--constrain-cells"]
    )
    session = repl.load_session(options)
    assert session.lm.constrain_cells is True
