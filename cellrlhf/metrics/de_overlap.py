"""DE-gene metrics: how far a prediction's differentially expressed genes match the real ones.

Both sides are :class:`~cellrlhf.metrics.de.DEResult` of
:func:`~cellrlhf.metrics.de.differential_expression` (``real`` and ``pred`` each tested against
their own control). Significant genes have ``padj < fdr_threshold`` (0.05) and are ranked by
``|log2 fold change|`` (float32, ties by gene order), as ``cell-eval`` 0.8.2 ranks them:

- ``overlap_at_n``: ``|top_k(real) & top_k(pred)| / k`` with ``k`` = the number of real
  significant genes (``N``) or a given cut-off, capped at that number (``cell-eval``
  ``overlap_at_N`` / ``overlap_at_50`` ...). No real significant gene: 0.
- ``precision_at_n``: the same with ``k`` from the predicted list (``precision_at_N``).
- ``signed_overlap_at_n`` (direction-aware; not in ``cell-eval``): as ``overlap_at_n`` but a
  shared gene counts only when both fold changes have the same sign.
- ``direction_match``: fraction of real significant genes whose predicted fold change has the
  same sign (``de_direction_match``); NaN without real significant genes.
- ``sig_genes_recall``: fraction of real significant genes also significant in the prediction
  (``de_sig_genes_recall``); NaN without real significant genes.

Example: real significant genes ranked ``[0, 2, 3]`` and predicted ``[2, 4, 0]`` give
``overlap_at_n = 2 / 3``.
"""

from __future__ import annotations

import numpy as np

from cellrlhf.metrics.de import FDR_THRESHOLD, DEResult

__all__ = [
    "overlap_at_n",
    "precision_at_n",
    "signed_overlap_at_n",
    "direction_match",
    "sig_genes_recall",
]


def _top_k(real: DEResult, pred: DEResult, k, fdr_threshold: float, *, by_pred: bool = False):
    """The effective cut-off and the genes in both top-``k`` lists."""
    r = real.ranked_significant(fdr_threshold)
    p = pred.ranked_significant(fdr_threshold)
    available = (p if by_pred else r).size
    k_eff = min(available if not k else int(k), available)
    return k_eff, np.intersect1d(r[:k_eff], p[:k_eff])


def overlap_at_n(
    real: DEResult, pred: DEResult, k: int | None = None, *, fdr_threshold: float = FDR_THRESHOLD
) -> float:
    """Share of the real top-``k`` significant genes among the predicted top-``k``.

    Parameters
    ----------
    real, pred
        DE results of the real and the predicted cells.
    k
        Cut-off (default: the number of real significant genes); capped at that number.
    fdr_threshold
        Significance threshold on the adjusted p-values.
    """
    k_eff, shared = _top_k(real, pred, k, fdr_threshold)
    return shared.size / k_eff if k_eff else 0.0


def precision_at_n(
    real: DEResult, pred: DEResult, k: int | None = None, *, fdr_threshold: float = FDR_THRESHOLD
) -> float:
    """Share of the predicted top-``k`` significant genes among the real top-``k``.

    ``k`` defaults to, and is capped at, the number of predicted significant genes.
    """
    k_eff, shared = _top_k(real, pred, k, fdr_threshold, by_pred=True)
    return shared.size / k_eff if k_eff else 0.0


def signed_overlap_at_n(
    real: DEResult, pred: DEResult, k: int | None = None, *, fdr_threshold: float = FDR_THRESHOLD
) -> float:
    """``overlap_at_n`` counting a shared gene only when it moves the same way in both."""
    k_eff, shared = _top_k(real, pred, k, fdr_threshold)
    if k_eff == 0:
        return 0.0
    same = np.sign(real.log2_fold_change[shared]) == np.sign(pred.log2_fold_change[shared])
    return int(np.count_nonzero(same)) / k_eff


def direction_match(
    real: DEResult, pred: DEResult, *, fdr_threshold: float = FDR_THRESHOLD
) -> float:
    """Fraction of real significant genes whose predicted fold change has the same sign."""
    sig = real.significant(fdr_threshold)
    if not sig.any():
        return float("nan")
    same = np.sign(real.log2_fold_change[sig]) == np.sign(pred.log2_fold_change[sig])
    return float(np.mean(same))


def sig_genes_recall(
    real: DEResult, pred: DEResult, *, fdr_threshold: float = FDR_THRESHOLD
) -> float:
    """Fraction of real significant genes that are also significant in the prediction."""
    sig = real.significant(fdr_threshold)
    if not sig.any():
        return float("nan")
    return float(np.mean(pred.significant(fdr_threshold)[sig]))
