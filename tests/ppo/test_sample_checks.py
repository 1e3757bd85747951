"""Sampled-answer checks of RL: fully valid cells and answers cut by the budget."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cellrlhf.ppo.sample_checks import SampleChecks, fully_valid_cells

TEXTS = [
    "<cell> ACTB GAPDH </cell>",  # valid
    "<cell> ACTB ACTB </cell>",  # repeated gene
    "<cell> ACTB GAPDH",  # never closed
    "<cell> ACTB NOTAGENE </cell>",  # unknown word
    "<cell> </cell>",  # empty
    "ACTB GAPDH",  # no markup
]
EOS, PAD = 1, 0


def test_fully_valid_cells_on_hand_made_answers(decoder):
    _, report = decoder.decode(TEXTS)
    assert fully_valid_cells(report).tolist() == [True, False, False, False, False, False]


def test_metrics_and_budget_hits(decoder):
    checks = SampleChecks(decoder, budget=4, end_ids=[EOS, PAD])
    ids = [[5, 6, 7, EOS], [5, 6, 7, 8], [5, 6, 7], [5, 6, 7, PAD], [5, 6, 7, 8, 9], [EOS]]
    assert checks.budget_hits(ids).tolist() == [False, True, False, False, True, False]
    metrics = checks(TEXTS, ids)
    assert metrics == {
        "cells/fully_valid_fraction": pytest.approx(1 / 6),
        "cells/budget_hit_fraction": pytest.approx(2 / 6),
    }


def test_budget_warning_says_how_many_and_is_rate_limited(decoder, caplog):
    checks = SampleChecks(decoder, budget=3, end_ids=[EOS], max_budget_hit=0.25, warn_every=3)
    cut = [[5, 6, 7]] * 2 + [[5, EOS]] * 2  # 50 % cut
    fine = [[5, EOS]] * 4
    texts = TEXTS[:4]
    with caplog.at_level(logging.WARNING, logger="cellrlhf.ppo.sample_checks"):
        checks(texts, fine)
        assert not caplog.records
        checks(texts, cut)
        assert len(caplog.records) == 1
        assert "50.0% of the sampled answers (2 of 4)" in caplog.text
        assert "budget of 3 tokens" in caplog.text
        checks(texts, cut)
        checks(texts, cut)  # within warn_every calls of the first warning: silent
        assert len(caplog.records) == 1
        checks(texts, cut)
        assert len(caplog.records) == 2
    assert np.isclose(checks(texts, fine)["cells/budget_hit_fraction"], 0.0)


def test_fully_valid_answers_are_the_cell_alone_and_ended(decoder):
    texts = [
        "<cell> ACTB GAPDH </cell>",  # the cell alone
        "<cell> ACTB GAPDH </cell> a T cell",  # text after the cell
        "<cell> ACTB </cell> <cell> GAPDH </cell>",  # a second cell
        "Here: <cell> ACTB GAPDH </cell>",  # text before it
        "  <cell> ACTB </cell>\n",  # surrounding whitespace is fine
        "<cell> ACTB GAPDH </cell>",  # cut by the budget (not finished)
    ]
    _, report = decoder.decode(texts)
    assert fully_valid_cells(report).tolist() == [True] * 6
    assert fully_valid_cells(report, texts).tolist() == [True, False, False, False, True, True]
    finished = [True] * 5 + [False]
    expected = [True, False, False, False, True, False]
    assert fully_valid_cells(report, texts, finished).tolist() == expected
    checks = SampleChecks(decoder, budget=3, end_ids=[EOS])
    metrics = checks(texts, [[5, EOS]] * 5 + [[5, 6, 7]])
    assert metrics["cells/fully_valid_fraction"] == pytest.approx(2 / 6)


def test_a_policy_closing_cells_at_the_budget_counts_full_answers_as_hits(decoder, caplog):
    ids = [[5, 6, EOS], [5, 6, 7, EOS], [5, 6, 7, 8]]
    plain = SampleChecks(decoder, budget=4, end_ids=[EOS])
    assert plain.budget_hits(ids).tolist() == [False, False, True]
    closing = SampleChecks(decoder, budget=4, end_ids=[EOS], closes_at_budget=True)
    assert closing.budget_hits(ids).tolist() == [False, True, True]
    with caplog.at_level(logging.WARNING, logger="cellrlhf.ppo.sample_checks"):
        closing(TEXTS[:3], ids)
    assert "(2 of 3)" in caplog.text and "closed early by the constraint" in caplog.text
