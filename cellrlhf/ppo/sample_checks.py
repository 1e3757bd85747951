"""Checks on the answers an RL trainer samples: valid cells and answers cut by the budget.

Every generation step of GRPO / RLOO reports, under ``cells/``:

- ``fully_valid_fraction``: answers that are one fully valid cell and nothing else
  (:func:`fully_valid_cells` with the answers' texts and end tokens);
- ``budget_hit_fraction``: answers that used the whole answer budget (``max_completion_length``)
  without an end token (with a constrained policy that closes cells at the budget: answers of
  the whole budget, their cells closed early). When that share exceeds ``max_budget_hit`` a warning says so, with the
  budget, so a too-small budget is never silent (the first time, then at most every
  ``warn_every`` steps).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

__all__ = ["fully_valid_cells", "SampleChecks"]

logger = logging.getLogger(__name__)


def fully_valid_cells(
    report, texts: Sequence[str] | None = None, finished: Sequence[bool] | None = None
) -> np.ndarray:
    """Per answer: a closed ``<cell> ... </cell>`` of distinct measured genes, at least one.

    Parameters
    ----------
    report
        The :class:`~cellrlhf.cell2text.decode_report.DecodeReport` of the answers.
    texts
        The answers' texts (markup kept, end token removed): when given, an answer must also be
        the cell alone (nothing before ``<cell>``, nothing after ``</cell>``, one cell).
    finished
        Whether each answer ended with an end token: when given, one that did not (cut by the
        budget) is not fully valid.

    Returns
    -------
    numpy.ndarray
        ``bool`` per answer: marked and closed, not empty, no unknown word, no repeated gene
        (and, with ``texts`` / ``finished``, nothing outside the cell, ended).
    """
    valid = (
        np.asarray(report.marked, dtype=bool)
        & np.asarray(report.closed, dtype=bool)
        & ~np.asarray(report.empty, dtype=bool)
        & (np.asarray(report.n_unknown) == 0)
        & (np.asarray(report.n_duplicates) == 0)
    )
    if texts is not None:
        valid &= np.asarray([_cell_alone(t) for t in texts], dtype=bool)
    if finished is not None:
        valid &= np.asarray(finished, dtype=bool)
    return valid


def _cell_alone(text: str) -> bool:
    """``text`` (stripped) is one ``<cell> ... </cell>`` and nothing else."""
    from cellrlhf.cell2text.markup import CELL_END, CELL_START

    text = text.strip()
    return (
        text.startswith(CELL_START)
        and text.endswith(CELL_END)
        and text.count(CELL_START) == 1
        and text.count(CELL_END) == 1
    )


class SampleChecks:
    """Validity and budget checks of one RL run's sampled answers.

    Parameters
    ----------
    decoder
        The data set's :class:`~cellrlhf.cell2text.decoder.ExpressionDecoder` (its report
        counts unknown and repeated genes).
    budget
        The answer budget in tokens (``max_completion_length``).
    end_ids
        Token ids that end an answer (the end token; padding after it).
    max_budget_hit
        Warn when more than this share of a step's answers hit the budget unfinished.
    warn_every
        Steps between repeated warnings.
    closes_at_budget
        The policy closes its cell when the budget runs out (a constrained policy with
        ``max_answer_tokens``): an answer of the whole budget counts as a hit, end token or not.
    """

    def __init__(
        self,
        decoder,
        *,
        budget: int,
        end_ids: Sequence[int],
        max_budget_hit: float = 0.02,
        warn_every: int = 50,
        closes_at_budget: bool = False,
    ) -> None:
        self.decoder = decoder
        self.budget = int(budget)
        self.end_ids = {int(i) for i in end_ids if i is not None}
        self.max_budget_hit = float(max_budget_hit)
        self.warn_every = int(warn_every)
        self.closes_at_budget = bool(closes_at_budget)
        self._calls = 0
        self._last_warning: int | None = None

    def finished(self, completion_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Per answer: it contains an end token (the turn ended before the budget)."""
        return np.asarray(
            [any(int(i) in self.end_ids for i in ids) for ids in completion_ids], dtype=bool
        )

    def budget_hits(self, completion_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Per answer: the budget was used up without an end token (or at all, with
        ``closes_at_budget``)."""
        return np.asarray(
            [
                len(ids) >= self.budget
                and (self.closes_at_budget or not len(ids) or int(ids[-1]) not in self.end_ids)
                for ids in completion_ids
            ],
            dtype=bool,
        )

    def __call__(self, texts: Sequence[str], completion_ids: Sequence[Sequence[int]]) -> dict:
        """Metrics of one step's answers (``texts`` with their cell markup); may warn."""
        _, report = self.decoder.decode(list(texts))
        valid = fully_valid_cells(report, texts, self.finished(completion_ids))
        hits = self.budget_hits(completion_ids)
        hit_fraction = float(hits.mean()) if len(hits) else 0.0
        self._calls += 1
        if hit_fraction > self.max_budget_hit and (
            self._last_warning is None or self._calls - self._last_warning >= self.warn_every
        ):
            self._last_warning = self._calls
            logger.warning(
                "%.1f%% of the sampled answers (%d of %d) hit the answer budget of %d tokens "
                "%s: their cells are cut. Raise "
                "max_completion_length, or leave it unset to derive it from the data's cells.",
                100 * hit_fraction,
                int(hits.sum()),
                len(hits),
                self.budget,
                "(closed early by the constraint)"
                if self.closes_at_budget
                else "without an end token (and are penalised)",
            )
        return {
            "cells/fully_valid_fraction": float(valid.mean()) if len(valid) else 0.0,
            "cells/budget_hit_fraction": hit_fraction,
        }
