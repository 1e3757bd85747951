"""Differential expression of perturbed against control cells, vectorized over genes.

Two tests, both two-sided and Benjamini-Hochberg corrected over genes:

``welch``
    Welch's t-test from per-group moments (count, mean, variance per gene). The moments are
    accumulated while streaming a backed AnnData, so no group is ever held in memory.
``wilcoxon``
    Wilcoxon rank-sum (Mann-Whitney U, normal approximation with tie correction) on the
    groups' expression matrices, as ``scanpy.tl.rank_genes_groups(method="wilcoxon")``.

The effect of a gene is the difference of group means on the expression scale used (on
log1p-normalized data, a natural-log fold change of normalized expression).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DE_METHODS",
    "GroupStats",
    "DEResult",
    "welch_t_test",
    "wilcoxon_rank_sum",
    "benjamini_hochberg",
    "differential_expression",
    "top_de_genes",
]

DE_METHODS = ("welch", "wilcoxon")


@dataclass(frozen=True)
class GroupStats:
    """Per-gene moments of one group of cells.

    Attributes
    ----------
    n
        Number of cells.
    mean, var
        Per-gene mean and unbiased variance (``var`` is 0 when ``n < 2``).
    """

    n: int
    mean: np.ndarray
    var: np.ndarray

    @classmethod
    def from_sums(cls, n: int, total: np.ndarray, total_sq: np.ndarray) -> GroupStats:
        """Moments from the count, per-gene sum and per-gene sum of squares."""
        total = np.asarray(total, dtype=np.float64)
        if n == 0:
            zeros = np.zeros_like(total)
            return cls(0, zeros, zeros)
        mean = total / n
        if n < 2:
            return cls(n, mean, np.zeros_like(mean))
        var = (np.asarray(total_sq, dtype=np.float64) - n * mean * mean) / (n - 1)
        return cls(n, mean, np.maximum(var, 0.0))

    @classmethod
    def from_matrix(cls, X) -> GroupStats:
        """Moments of a (cells x genes) dense or sparse matrix."""
        import scipy.sparse as sp

        n = X.shape[0]
        if sp.issparse(X):
            total = np.asarray(X.sum(axis=0)).ravel()
            total_sq = np.asarray(X.multiply(X).sum(axis=0)).ravel()
        else:
            X = np.asarray(X, dtype=np.float64)
            total, total_sq = X.sum(axis=0), (X * X).sum(axis=0)
        return cls.from_sums(n, total, total_sq)


@dataclass(frozen=True)
class DEResult:
    """Differential expression of one perturbed group against its controls.

    Attributes
    ----------
    effect
        Per-gene difference of means (perturbed - control).
    pvalue, padj
        Two-sided p-values and Benjamini-Hochberg adjusted p-values (1 where untestable).
    method
        ``"welch"`` or ``"wilcoxon"``.
    n_perturbed, n_control
        Cells in each group.
    """

    effect: np.ndarray
    pvalue: np.ndarray
    padj: np.ndarray
    method: str
    n_perturbed: int
    n_control: int


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN treated as 1)."""
    p = np.nan_to_num(np.asarray(pvalues, dtype=np.float64), nan=1.0)
    n = p.size
    if n == 0:
        return p
    order = np.argsort(p, kind="stable")
    ranked = p[order] * n / np.arange(1, n + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(ranked, 1.0)
    return out


def welch_t_test(perturbed: GroupStats, control: GroupStats) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene Welch t statistic and two-sided p-value.

    Genes with zero variance in both groups get ``t = 0, p = 1`` when the means agree and
    ``p = 0`` when they differ; groups with fewer than 2 cells give ``p = 1``.
    """
    from scipy import stats

    n1, n0 = perturbed.n, control.n
    shape = np.shape(perturbed.mean)
    if n1 < 2 or n0 < 2:
        return np.zeros(shape), np.ones(shape)
    se1, se0 = perturbed.var / n1, control.var / n0
    se2 = se1 + se0
    diff = perturbed.mean - control.mean
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / np.sqrt(se2)
        df = se2**2 / (se1**2 / (n1 - 1) + se0**2 / (n0 - 1))
        p = 2.0 * stats.t.sf(np.abs(t), df)
    degenerate = se2 <= 0
    t = np.where(degenerate, 0.0, t)
    p = np.where(degenerate, np.where(np.isclose(diff, 0.0), 1.0, 0.0), p)
    return t, np.nan_to_num(p, nan=1.0)


def wilcoxon_rank_sum(perturbed, control) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene Mann-Whitney U statistic and two-sided p-value (normal approximation).

    Parameters
    ----------
    perturbed, control
        (cells x genes) dense or sparse matrices.
    """
    import scipy.sparse as sp
    from scipy import stats

    x = perturbed.toarray() if sp.issparse(perturbed) else np.asarray(perturbed)
    y = control.toarray() if sp.issparse(control) else np.asarray(control)
    n_genes = x.shape[1]
    if x.shape[0] < 2 or y.shape[0] < 2:
        return np.zeros(n_genes), np.ones(n_genes)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = stats.mannwhitneyu(x, y, axis=0, alternative="two-sided", method="asymptotic")
    constant = (x.max(axis=0) == x.min(axis=0)) & (y.max(axis=0) == y.min(axis=0))
    pvalue = np.where(
        constant, np.where(x[0] == y[0], 1.0, 0.0), np.nan_to_num(result.pvalue, nan=1.0)
    )
    return np.asarray(result.statistic, dtype=np.float64), pvalue


def differential_expression(
    perturbed: GroupStats,
    control: GroupStats,
    *,
    method: str = "welch",
    perturbed_matrix=None,
    control_matrix=None,
) -> DEResult:
    """Test every gene, perturbed vs control.

    Parameters
    ----------
    perturbed, control
        Moments of the two groups (used for the effect, and for the Welch test).
    method
        ``"welch"`` or ``"wilcoxon"``; Wilcoxon needs ``perturbed_matrix`` and ``control_matrix``.
    """
    if method not in DE_METHODS:
        raise ValueError(f"de.method={method!r}; choose one of {DE_METHODS}.")
    if method == "welch":
        _, pvalue = welch_t_test(perturbed, control)
    else:
        if perturbed_matrix is None or control_matrix is None:
            raise ValueError("the Wilcoxon test needs the expression matrices of both groups.")
        _, pvalue = wilcoxon_rank_sum(perturbed_matrix, control_matrix)
    return DEResult(
        effect=perturbed.mean - control.mean,
        pvalue=pvalue,
        padj=benjamini_hochberg(pvalue),
        method=method,
        n_perturbed=perturbed.n,
        n_control=control.n,
    )


def top_de_genes(
    result: DEResult,
    genes: tuple[str, ...] | list[str],
    *,
    n_top: int = 20,
    alpha: float = 0.05,
    min_abs_effect: float = 0.0,
) -> tuple[list[str], list[str]]:
    """The ``n_top`` significant genes going up and down, largest effect first.

    A gene qualifies when ``padj < alpha`` and ``|effect| > min_abs_effect``; ties in effect
    keep vocabulary order.
    """
    effect = np.asarray(result.effect, dtype=np.float64)
    significant = (result.padj < alpha) & (np.abs(effect) > min_abs_effect)
    up = np.flatnonzero(significant & (effect > 0))
    down = np.flatnonzero(significant & (effect < 0))
    up = up[np.argsort(-effect[up], kind="stable")][:n_top]
    down = down[np.argsort(effect[down], kind="stable")][:n_top]
    return [genes[i] for i in up], [genes[i] for i in down]
