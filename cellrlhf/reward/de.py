"""Differential expression against control and the DE-gene metrics built on it.

The test and the fold change follow ``cell-eval`` 0.8.2 (which calls ``pdex`` in its default
"reference" mode), so that ``overlap_at_N`` and friends agree with it:

- two-sided Mann-Whitney U test per gene, perturbed cells vs control cells, asymptotic normal
  approximation with tie correction and continuity correction (a gene constant across both
  groups gets p = 1);
- Benjamini-Hochberg FDR over the genes of one perturbation;
- log2 fold change of the geometric-mean pseudo-bulks back in count space:
  ``log2(expm1(mean(X_pert)) / expm1(mean(X_ctrl)))`` for log1p data (0/0 is 0, x/0 is inf);
- significant genes: FDR < 0.05, ranked by ``|log2 fold change|`` (float32, ties by gene order).

Metrics per perturbation (``real`` and ``pred`` each tested against their own control):

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

"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import erfc
from scipy.stats import false_discovery_control, rankdata

__all__ = [
    "FDR_THRESHOLD",
    "DifferentialExpression",
    "differential_expression",
    "mann_whitney_u",
    "overlap_at_n",
    "precision_at_n",
    "signed_overlap_at_n",
    "direction_match",
    "sig_genes_recall",
]

FDR_THRESHOLD = 0.05


@dataclass(frozen=True)
class DifferentialExpression:
    """One perturbation's test against control, one entry per gene (column order).

    Attributes
    ----------
    log2_fold_change
        float32, as ``cell-eval`` stores it (may be +-inf where one side is zero).
    p_value, fdr
        Mann-Whitney U p-values and their Benjamini-Hochberg adjustment.
    """

    log2_fold_change: np.ndarray
    p_value: np.ndarray
    fdr: np.ndarray

    def significant(self, fdr_threshold: float = FDR_THRESHOLD) -> np.ndarray:
        """Boolean mask of genes with FDR below the threshold."""
        return self.fdr < fdr_threshold

    def ranked_significant(self, fdr_threshold: float = FDR_THRESHOLD) -> np.ndarray:
        """Indices of significant genes, largest ``|log2 fold change|`` first."""
        sig = np.flatnonzero(self.significant(fdr_threshold))
        strength = np.abs(self.log2_fold_change[sig].astype(np.float32))
        return sig[np.argsort(-strength, kind="stable")]


def _dense(X) -> np.ndarray:
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)


def _tie_term(sorted_cols: np.ndarray) -> np.ndarray:
    """Sum of ``t**3 - t`` over each column's groups of tied values (columns pre-sorted)."""
    n, g = sorted_cols.shape
    if n == 0:
        return np.zeros(g)
    starts = np.ones((n, g), dtype=bool)
    starts[1:] = sorted_cols[1:] != sorted_cols[:-1]
    run = np.cumsum(starts, axis=0) - 1 + np.arange(g)[None, :] * n
    t = np.bincount(run.ravel(), minlength=n * g).astype(np.float64)
    return (t**3 - t).reshape(g, n).sum(axis=1)


def mann_whitney_u(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Mann-Whitney U test of each column of ``x`` against the same column of ``y``.

    Asymptotic p-values with tie and continuity corrections (``scipy.stats.mannwhitneyu``
    with ``method="asymptotic"``), p = 1 for columns without spread.

    Returns
    -------
    statistic
        ``U`` of ``x``.
    p_value
        Two-sided p-values in ``[0, 1]``.
    """
    x = _dense(x)
    y = _dense(y)
    n1, n2 = x.shape[0], y.shape[0]
    if n1 == 0 or n2 == 0:
        raise ValueError(f"Mann-Whitney U needs cells on both sides; got {n1} and {n2}.")
    both = np.vstack([x, y])
    n = n1 + n2
    ranks = rankdata(both, axis=0, method="average")
    u1 = ranks[:n1].sum(axis=0) - n1 * (n1 + 1) / 2.0
    u = np.maximum(u1, n1 * n2 - u1)
    ties = _tie_term(np.sort(both, axis=0))
    var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0))) if n > 1 else np.zeros_like(u)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (u - n1 * n2 / 2.0 - 0.5) / np.sqrt(var)
        p = erfc(z / np.sqrt(2.0))
    p = np.where(var > 0, p, 1.0)
    return u1, np.clip(p, 0.0, 1.0)


def _count_space_mean(X: np.ndarray, is_log1p: bool) -> np.ndarray:
    log_mean = X.mean(axis=0) if is_log1p else np.log1p(X).mean(axis=0)
    return np.expm1(log_mean)


def differential_expression(
    X_group, X_control, *, is_log1p: bool = True, epsilon: float = 0.0
) -> DifferentialExpression:
    """Test every gene of a group of cells against control cells (``cell-eval``'s way).

    Parameters
    ----------
    X_group, X_control
        Cells x genes (dense or sparse), log1p-normalized unless ``is_log1p=False``.
    is_log1p
        Whether the values are ``log1p`` of normalized counts (fold changes are taken in count
        space either way).
    epsilon
        Pseudo-count added to both means before the ratio (``cell-eval`` uses 0).
    """
    xg = _dense(X_group)
    xc = _dense(X_control)
    if xg.shape[1] != xc.shape[1]:
        raise ValueError(f"gene counts differ: group {xg.shape[1]}, control {xc.shape[1]}.")
    _, p = mann_whitney_u(xg, xc)
    mg = _count_space_mean(xg, is_log1p)
    mc = _count_space_mean(xc, is_log1p)
    with np.errstate(invalid="ignore", divide="ignore"):
        lfc = np.log2((mg + epsilon) / (mc + epsilon))
    lfc = np.where(np.isnan(lfc), 0.0, lfc).astype(np.float32)
    fdr = false_discovery_control(p) if p.size else p.copy()
    return DifferentialExpression(log2_fold_change=lfc, p_value=p, fdr=np.asarray(fdr))


def _cut(k: int | None, available: int) -> int:
    return min(available if not k else int(k), available)


def overlap_at_n(
    real: DifferentialExpression,
    pred: DifferentialExpression,
    k: int | None = None,
    *,
    fdr_threshold: float = FDR_THRESHOLD,
) -> float:
    """Share of the real top-``k`` significant genes among the predicted top-``k``."""
    r = real.ranked_significant(fdr_threshold)
    p = pred.ranked_significant(fdr_threshold)
    k_eff = _cut(k, r.size)
    if k_eff == 0:
        return 0.0
    return np.intersect1d(r[:k_eff], p[:k_eff]).size / k_eff


def precision_at_n(
    real: DifferentialExpression,
    pred: DifferentialExpression,
    k: int | None = None,
    *,
    fdr_threshold: float = FDR_THRESHOLD,
) -> float:
    """Share of the predicted top-``k`` significant genes among the real top-``k``."""
    r = real.ranked_significant(fdr_threshold)
    p = pred.ranked_significant(fdr_threshold)
    k_eff = _cut(k, p.size)
    if k_eff == 0:
        return 0.0
    return np.intersect1d(r[:k_eff], p[:k_eff]).size / k_eff


def signed_overlap_at_n(
    real: DifferentialExpression,
    pred: DifferentialExpression,
    k: int | None = None,
    *,
    fdr_threshold: float = FDR_THRESHOLD,
) -> float:
    """``overlap_at_n`` counting a shared gene only when it moves the same way in both."""
    r = real.ranked_significant(fdr_threshold)
    p = pred.ranked_significant(fdr_threshold)
    k_eff = _cut(k, r.size)
    if k_eff == 0:
        return 0.0
    shared = np.intersect1d(r[:k_eff], p[:k_eff])
    same = np.sign(real.log2_fold_change[shared]) == np.sign(pred.log2_fold_change[shared])
    return int(np.count_nonzero(same)) / k_eff


def direction_match(
    real: DifferentialExpression,
    pred: DifferentialExpression,
    *,
    fdr_threshold: float = FDR_THRESHOLD,
) -> float:
    """Fraction of real significant genes whose predicted fold change has the same sign."""
    sig = real.significant(fdr_threshold)
    if not sig.any():
        return float("nan")
    same = np.sign(real.log2_fold_change[sig]) == np.sign(pred.log2_fold_change[sig])
    return float(np.mean(same))


def sig_genes_recall(
    real: DifferentialExpression,
    pred: DifferentialExpression,
    *,
    fdr_threshold: float = FDR_THRESHOLD,
) -> float:
    """Fraction of real significant genes that are also significant in the prediction."""
    sig = real.significant(fdr_threshold)
    if not sig.any():
        return float("nan")
    return float(np.mean(pred.significant(fdr_threshold)[sig]))
