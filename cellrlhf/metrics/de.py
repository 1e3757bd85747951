"""Differential expression of perturbed against control cells: one test for every stage.

:func:`differential_expression` tests every gene, two-sided, and adjusts over the genes with
Benjamini-Hochberg (:func:`scipy.stats.false_discovery_control`). The data stage takes the DE
genes of SFT ``perturbation_effect`` answers and RL ``de_genes_up/down`` from it
(:func:`top_de_genes`); evaluation scores ``overlap_at_N`` and friends on it
(:mod:`cellrlhf.metrics.de_overlap`). Methods (:data:`DE_METHODS`):

``wilcoxon``
    Mann-Whitney U on the cells (:func:`scipy.stats.mannwhitneyu`, ``method="asymptotic"``,
    tie and continuity corrections, vectorised over genes): the test of ``cell-eval`` 0.8.2
    (``pdex``). ``scanpy``'s ``rank_genes_groups(method="wilcoxon")`` uses the same statistic
    without either correction by default, so its p-values differ slightly. A gene with one value
    in both groups gets ``p = 1``.
``welch``
    Welch's t-test from per-group moments (:func:`scipy.stats.ttest_ind_from_stats`,
    ``equal_var=False``), so the data stage can stream the moments of a backed AnnData
    (:class:`~cellrlhf.metrics.pseudobulk.GroupAccumulator`). Zero variance in both groups
    gives ``t = 0, p = 1`` when the means agree and ``p = 0`` when they differ; fewer than 2
    cells on a side gives ``p = 1``.

Two effect sizes come from the group means: ``effect`` = mean(perturbed) - mean(control) (the
data stage ranks its DE genes by it) and ``log2_fold_change`` =
``log2(expm1(mean(X_pert)) / expm1(mean(X_ctrl)))`` on log1p data, float32, 0/0 = 0, x/0 = inf
(``cell-eval``'s count-space fold change; the DE metrics rank significant genes by it).

Example: perturbed cells ``[[3], [4], [5]]`` against control ``[[0], [1], [2]]`` give
``U = 9``, ``p = 0.0809``, ``effect = 3``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy import stats

from cellrlhf.metrics.pseudobulk import GroupStats

__all__ = [
    "DE_METHODS",
    "FDR_THRESHOLD",
    "DEResult",
    "differential_expression",
    "top_de_genes",
]

DE_METHODS = ("welch", "wilcoxon")
FDR_THRESHOLD = 0.05


@dataclass(frozen=True)
class DEResult:
    """Differential expression of one perturbed group against its controls, one entry per gene.

    Attributes
    ----------
    statistic
        Welch ``t`` or the Mann-Whitney ``U`` of the perturbed group.
    pvalue, padj
        Two-sided p-values and their Benjamini-Hochberg adjustment over the genes.
    effect
        Difference of means, perturbed - control, on the expression scale given.
    log2_fold_change
        float32 log2 fold change of the count-space pseudo-bulks (may be +-inf).
    method
        ``"welch"`` or ``"wilcoxon"``.
    n_perturbed, n_control
        Cells in each group.
    """

    statistic: np.ndarray
    pvalue: np.ndarray
    padj: np.ndarray
    effect: np.ndarray
    log2_fold_change: np.ndarray
    method: str
    n_perturbed: int
    n_control: int

    def significant(self, fdr_threshold: float = FDR_THRESHOLD) -> np.ndarray:
        """Boolean mask of genes with adjusted p-value below ``fdr_threshold``."""
        return self.padj < fdr_threshold

    def ranked_significant(self, fdr_threshold: float = FDR_THRESHOLD) -> np.ndarray:
        """Indices of significant genes, largest ``|log2_fold_change|`` first (ties: gene order)."""
        sig = np.flatnonzero(self.significant(fdr_threshold))
        strength = np.abs(self.log2_fold_change[sig].astype(np.float32))
        return sig[np.argsort(-strength, kind="stable")]


def _dense(X) -> np.ndarray:
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)


def _welch(perturbed: GroupStats, control: GroupStats) -> tuple[np.ndarray, np.ndarray]:
    shape = np.shape(perturbed.mean)
    if perturbed.n < 2 or control.n < 2:
        return np.zeros(shape), np.ones(shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        t, p = stats.ttest_ind_from_stats(
            perturbed.mean,
            np.sqrt(perturbed.var),
            perturbed.n,
            control.mean,
            np.sqrt(control.var),
            control.n,
            equal_var=False,
        )
    diff = perturbed.mean - control.mean
    degenerate = perturbed.var / perturbed.n + control.var / control.n <= 0
    t = np.where(degenerate, 0.0, t)
    p = np.where(degenerate, np.where(np.isclose(diff, 0.0), 1.0, 0.0), p)
    return np.asarray(t, dtype=np.float64), np.nan_to_num(p, nan=1.0)


def _wilcoxon(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = _dense(x), _dense(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = stats.mannwhitneyu(
            x, y, axis=0, alternative="two-sided", method="asymptotic", use_continuity=True
        )
    # a gene with one value in both groups: scipy gives p = 1 (NaN guarded all the same)
    return np.asarray(result.statistic, np.float64), np.nan_to_num(result.pvalue, nan=1.0)


def _log2_fold_change(log_mean_p: np.ndarray, log_mean_c: np.ndarray, eps: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        lfc = np.log2((np.expm1(log_mean_p) + eps) / (np.expm1(log_mean_c) + eps))
    return np.where(np.isnan(lfc), 0.0, lfc).astype(np.float32)


def _moments(group, name: str) -> GroupStats:
    stats_ = group if isinstance(group, GroupStats) else GroupStats.from_matrix(group)
    if stats_.n == 0:
        raise ValueError(f"the {name} group has no cells; differential expression needs cells.")
    return stats_


def differential_expression(
    perturbed,
    control,
    *,
    method: str = "wilcoxon",
    perturbed_matrix=None,
    control_matrix=None,
    is_log1p: bool = True,
    epsilon: float = 0.0,
) -> DEResult:
    """Test every gene of a perturbed group against control cells.

    Parameters
    ----------
    perturbed, control
        Each a cells x genes matrix (dense or sparse) or its
        :class:`~cellrlhf.metrics.pseudobulk.GroupStats`. The effects (and the Welch test) come
        from their moments.
    method
        ``"wilcoxon"`` (default, as ``cell-eval``) or ``"welch"``; see the module docstring.
    perturbed_matrix, control_matrix
        Cells for the rank test when ``perturbed`` / ``control`` are moments (the data stage
        keeps a sample of each group's cells while it streams the moments of all of them).
        Default: ``perturbed`` / ``control`` themselves.
    is_log1p
        Whether the values are ``log1p`` of normalized counts. Fold changes are taken in count
        space either way; with ``False`` the inputs must be matrices.
    epsilon
        Pseudo-count added to both count-space means before the ratio (``cell-eval`` uses 0).

    Returns
    -------
    DEResult
        Per-gene statistic, p-value, BH-adjusted p-value, effect and log2 fold change.

    Raises
    ------
    ValueError
        For an unknown method, a group without cells, groups with different genes, or a rank
        test without the cells it needs.
    """
    if method not in DE_METHODS:
        raise ValueError(f"de.method={method!r}; choose one of {DE_METHODS}.")
    moments_p, moments_c = _moments(perturbed, "perturbed"), _moments(control, "control")
    if moments_p.mean.shape != moments_c.mean.shape:
        raise ValueError(
            f"gene counts differ: perturbed {moments_p.mean.shape}, control {moments_c.mean.shape}."
        )
    if method == "welch":
        statistic, pvalue = _welch(moments_p, moments_c)
    else:
        x = perturbed if perturbed_matrix is None else perturbed_matrix
        y = control if control_matrix is None else control_matrix
        if isinstance(x, GroupStats) or isinstance(y, GroupStats):
            raise ValueError(
                "the Wilcoxon test needs the expression matrices of both groups: pass "
                "perturbed_matrix= and control_matrix=, or use method='welch' on moments."
            )
        if x.shape[0] == 0 or y.shape[0] == 0:
            raise ValueError(
                f"the rank test needs cells on both sides; got {x.shape[0]} and {y.shape[0]}."
            )
        statistic, pvalue = _wilcoxon(x, y)
    if is_log1p:
        log_p, log_c = moments_p.mean, moments_c.mean
    elif isinstance(perturbed, GroupStats) or isinstance(control, GroupStats):
        raise ValueError("is_log1p=False needs the expression matrices (means of log1p(X)).")
    else:
        log_p = np.log1p(_dense(perturbed)).mean(axis=0)
        log_c = np.log1p(_dense(control)).mean(axis=0)
    pvalue = np.clip(pvalue, 0.0, 1.0)
    return DEResult(
        statistic=statistic,
        pvalue=pvalue,
        padj=stats.false_discovery_control(pvalue) if pvalue.size else pvalue.copy(),
        effect=moments_p.mean - moments_c.mean,
        log2_fold_change=_log2_fold_change(log_p, log_c, epsilon),
        method=method,
        n_perturbed=moments_p.n,
        n_control=moments_c.n,
    )


def top_de_genes(
    result: DEResult,
    genes: Sequence[str],
    *,
    n_top: int = 20,
    alpha: float = FDR_THRESHOLD,
    min_abs_effect: float = 0.0,
) -> tuple[list[str], list[str]]:
    """The ``n_top`` significant genes going up and down, largest ``effect`` first.

    Parameters
    ----------
    result
        A :class:`DEResult`.
    genes
        Gene names in column order.
    n_top
        Genes per direction at most.
    alpha
        A gene qualifies when ``padj < alpha`` ...
    min_abs_effect
        ... and ``|effect| > min_abs_effect``.

    Returns
    -------
    up, down
        Gene names; ties in effect keep vocabulary order.
    """
    effect = np.asarray(result.effect, dtype=np.float64)
    significant = (result.padj < alpha) & (np.abs(effect) > min_abs_effect)
    up = np.flatnonzero(significant & (effect > 0))
    down = np.flatnonzero(significant & (effect < 0))
    up = up[np.argsort(-effect[up], kind="stable")][:n_top]
    down = down[np.argsort(effect[down], kind="stable")][:n_top]
    return [genes[i] for i in up], [genes[i] for i in down]
