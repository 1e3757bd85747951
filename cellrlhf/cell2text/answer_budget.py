"""The answer budget of generated cells: how many tokens a model needs to write a whole cell.

An RL policy (or any sampler) writes ``<cell> G1 ... Gn </cell>`` then an end token within a
budget of new tokens (``max_completion_length``). A budget shorter than the data's cells cuts
them: unclosed, penalised, with missing genes. The budget is derived from the data's own cells
(:func:`derive_answer_budget`: a high quantile of their token lengths, markup and end token
included) and any configured budget is checked against them (:func:`check_answer_budget`),
at data-build time (word counts, gene-token estimate) and, with real token counts, when
preferences are sampled and at RL start (:func:`resolve_answer_budget`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "GENE_TOKEN_MARKUP",
    "BudgetCheck",
    "answer_token_lengths",
    "check_answer_budget",
    "derive_answer_budget",
    "gene_token_lengths",
    "resolve_answer_budget",
]

logger = logging.getLogger(__name__)

GENE_TOKEN_MARKUP = 4
"""Tokens besides the genes of an answer with one token per gene: ``<cell>``, the separator
before ``</cell>``, ``</cell>`` and the end token."""


def gene_token_lengths(n_genes: Iterable[int]) -> np.ndarray:
    """Answer lengths in tokens of cells of ``n_genes`` genes, for a gene-token tokenizer."""
    n = np.asarray(list(n_genes) if not isinstance(n_genes, np.ndarray) else n_genes)
    return n.astype(np.int64) + GENE_TOKEN_MARKUP


def answer_token_lengths(tokenizer, sentences: Sequence[str]) -> np.ndarray:
    """Tokens of each sentence written as an answer: ``<cell> ... </cell>`` plus the end token."""
    from cellrlhf.cell2text.markup import format_cell

    encoded = tokenizer([format_cell(s) for s in sentences], add_special_tokens=False)
    return np.asarray([len(ids) + 1 for ids in encoded["input_ids"]], dtype=np.int64)


def derive_answer_budget(lengths: Sequence[int], *, quantile: float = 0.99) -> int:
    """The smallest budget that fits the ``quantile`` of the answers (``ceil`` of the quantile).

    Raises
    ------
    ValueError
        Without lengths or for a quantile outside ``(0, 1]``.
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.size == 0:
        raise ValueError("no cell lengths to derive an answer budget from.")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile={quantile}; it must be in (0, 1].")
    return int(math.ceil(np.quantile(lengths, quantile, method="higher")))


@dataclass(frozen=True)
class BudgetCheck:
    """How a budget fits the data's answers.

    Attributes
    ----------
    budget
        The budget checked (tokens).
    n_cells, n_cut
        Answers considered, and those longer than the budget.
    fits_budget
        The derived budget (:func:`derive_answer_budget` at the check's quantile).
    """

    budget: int
    n_cells: int
    n_cut: int
    fits_budget: int

    @property
    def cut_fraction(self) -> float:
        return self.n_cut / self.n_cells if self.n_cells else 0.0

    def to_dict(self) -> dict:
        return {
            "budget": self.budget,
            "n_cells": self.n_cells,
            "n_cut": self.n_cut,
            "cut_fraction": self.cut_fraction,
            "fits_budget": self.fits_budget,
        }


def check_answer_budget(
    lengths: Sequence[int],
    budget: int,
    *,
    max_cut: float = 0.01,
    quantile: float = 0.99,
    where: str = "RL",
    flag: str = "max_completion_length",
) -> BudgetCheck:
    """Count the answers a budget cuts; warn when more than ``max_cut`` of them are cut.

    Parameters
    ----------
    lengths
        Answer lengths in tokens (markup and end token included).
    budget
        The configured budget (``max_completion_length``).
    max_cut
        Largest share of cut answers accepted silently.
    quantile
        Quantile of the budget the warning recommends.
    where
        Named in the warning (``"data build"``, ``"RL"``).
    flag
        The setting the warning tells the user to change.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    check = BudgetCheck(
        budget=int(budget),
        n_cells=int(lengths.size),
        n_cut=int((lengths > budget).sum()),
        fits_budget=derive_answer_budget(lengths, quantile=quantile),
    )
    if check.cut_fraction > max_cut:
        logger.warning(
            "%s: an answer budget of %d tokens cuts %d of %d cells (%.1f%%; longest %d tokens, "
            "markup and end token included). A budget of %d fits %g%% of them: set "
            "%s to it, or leave it unset to derive it from the data.",
            where,
            check.budget,
            check.n_cut,
            check.n_cells,
            100 * check.cut_fraction,
            int(lengths.max()),
            check.fits_budget,
            100 * quantile,
            flag,
        )
    return check


def resolve_answer_budget(
    configured: int | None,
    rows,
    tokenizer,
    *,
    flag: str = "max_completion_length",
    where: str = "RL start",
    max_cells: int = 4096,
    seed: int = 0,
) -> tuple[int, dict]:
    """A sampler's answer budget: ``configured``, checked against the data's cells, or derived.

    Parameters
    ----------
    configured
        The configured budget, or ``None`` to derive it (:func:`derive_answer_budget`).
    rows
        Prompt rows (``rl/`` split) whose ``reference_sentences`` are the real perturbed cells;
        at most ``max_cells`` of them (seeded subsample) are written as answers and tokenized
        with ``tokenizer``.
    flag
        The setting that holds the budget, named in messages.
    where
        Named in the warning when a configured budget cuts more than 1 % of the cells.

    Returns
    -------
    tuple
        The budget and its record (``cellrlhf.json``, manifests).

    Raises
    ------
    ValueError
        When the budget is unset and ``rows`` hold no reference cells to derive it from.
    """
    columns = getattr(rows, "column_names", None) or []
    sentences = []
    if "reference_sentences" in columns:
        sentences = [s for row in rows["reference_sentences"] for s in (row or [])]
    if not sentences:
        if configured is None:
            raise ValueError(
                f"{flag} is unset and the rl/ train split has no reference sentences to derive "
                f"it from: set {flag}."
            )
        return int(configured), {"budget": int(configured), "source": "configured"}
    if len(sentences) > max_cells:
        rng = np.random.default_rng(seed)
        sentences = [sentences[i] for i in np.sort(rng.choice(len(sentences), max_cells, False))]
    lengths = answer_token_lengths(tokenizer, sentences)
    if configured is None:
        budget = derive_answer_budget(lengths)
        logger.info(
            "answer budget derived from %d training cells: %d tokens (99th percentile; longest %d)",
            len(lengths),
            budget,
            int(lengths.max()),
        )
        check = check_answer_budget(lengths, budget, max_cut=1.0)
        return budget, {**check.to_dict(), "source": "derived (99th percentile of cells)"}
    check = check_answer_budget(lengths, int(configured), where=where, flag=flag)
    return int(configured), {**check.to_dict(), "source": "configured"}
