"""The answer budget: derived from hand-made cell lengths, and warnings when a budget cuts cells."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cellrlhf.cell2text.answer_budget import (
    GENE_TOKEN_MARKUP,
    answer_token_lengths,
    check_answer_budget,
    derive_answer_budget,
    gene_token_lengths,
)
from cellrlhf.cell2text.tokenizer import build_cell_tokenizer
from cellrlhf.cell2text.vocab import GeneVocab

LOGGER = "cellrlhf.cell2text.answer_budget"


def test_derived_budget_is_the_quantile_of_hand_made_lengths():
    lengths = list(range(1, 101))  # 1 .. 100 tokens
    assert derive_answer_budget(lengths) == 100  # 'higher' 99th percentile of 100 values
    assert derive_answer_budget(lengths, quantile=0.5) == 51
    assert derive_answer_budget([7, 7, 7]) == 7
    with pytest.raises(ValueError, match="no cell lengths"):
        derive_answer_budget([])
    with pytest.raises(ValueError, match="quantile"):
        derive_answer_budget([3], quantile=0)


def test_gene_token_lengths_match_the_cell_tokenizer():
    genes = ["CD3E", "CD8A", "LYZ", "NKG7"]
    tok = build_cell_tokenizer(GeneVocab(genes), texts=["hello there"])
    sentences = ["CD3E", "CD3E CD8A LYZ", "CD3E CD8A LYZ NKG7"]
    assert answer_token_lengths(tok, sentences).tolist() == [5, 7, 8]
    assert gene_token_lengths([1, 3, 4]).tolist() == [5, 7, 8]
    assert GENE_TOKEN_MARKUP == 4


def test_a_budget_that_cuts_cells_is_warned_with_counts_and_a_fitting_budget(caplog):
    lengths = np.array([10] * 90 + [40] * 10)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        check = check_answer_budget(lengths, 32, where="RL start")
    assert (check.n_cells, check.n_cut, check.fits_budget) == (100, 10, 40)
    assert check.cut_fraction == pytest.approx(0.1)
    assert "RL start: an answer budget of 32 tokens cuts 10 of 100 cells (10.0%" in caplog.text
    assert "A budget of 40 fits" in caplog.text


def test_a_budget_that_fits_or_cuts_a_small_share_is_silent(caplog):
    lengths = np.array([10] * 995 + [40] * 5)  # 0.5 % cut by 32
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert check_answer_budget(lengths, 32).n_cut == 5
        assert check_answer_budget(lengths, 40).n_cut == 0
    assert not caplog.records
