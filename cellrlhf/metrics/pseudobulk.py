"""Pseudo-bulks: per-group counts, sums, means and variances of cells x genes expression.

Every fidelity metric compares pseudo-bulks (one mean profile per perturbation), never single
cells, and the Welch test needs each group's per-gene mean and variance. One kernel,
:func:`group_sums`, computes them for dense and sparse matrices alike with one sparse matrix
product (a group x cells indicator times the cells x genes block) instead of a Python loop:

- :func:`group_means` and :func:`pseudobulk` average a whole matrix at once (evaluation,
  baselines);
- :class:`GroupAccumulator` adds block after block while a backed AnnData is streamed (the data
  stage), so no group is ever held in memory, and hands out :class:`GroupStats`.

Example: rows ``[1, 0], [3, 2], [5, 5]`` in groups ``0, 0, 1`` have the means ``[2, 1]`` and
``[5, 5]``; group 0's unbiased variances are ``[2, 2]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "GroupStats",
    "GroupAccumulator",
    "PseudoBulks",
    "group_codes",
    "group_sums",
    "group_means",
    "pseudobulk",
]


def group_codes(labels: Sequence[object] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique labels and the position of each element's label among them.

    Parameters
    ----------
    labels
        One label per cell (any type; compared as strings).

    Returns
    -------
    categories
        Unique labels as strings, sorted.
    codes
        ``int64`` array, ``categories[codes[i]] == str(labels[i])``.
    """
    values = pd.Series(np.asarray(labels, dtype=object)).astype(str).to_numpy(dtype=object)
    categories, codes = np.unique(values, return_inverse=True)
    return categories, codes.astype(np.int64).ravel()


def group_sums(
    X, codes: np.ndarray, n_groups: int | None = None, *, squares: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Count, per-gene sum (and sum of squares) of the rows of ``X`` in each group.

    Parameters
    ----------
    X
        Cells x genes, dense or any scipy sparse format.
    codes
        Group of each row: integers in ``[0, n_groups)``, or ``-1`` for "in no group".
    n_groups
        Number of groups (default ``codes.max() + 1``).
    squares
        Also sum the squared values.

    Returns
    -------
    counts
        ``(n_groups,)`` int64 rows per group.
    total, total_sq
        ``(n_groups, n_genes)`` float64 sums; ``total_sq`` is ``None`` unless ``squares``.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 1 or codes.shape[0] != X.shape[0]:
        raise ValueError(f"codes has shape {codes.shape}; expected ({X.shape[0]},), one per row.")
    if n_groups is None:
        n_groups = int(codes.max()) + 1 if codes.size else 0
    if codes.size and codes.max() >= n_groups:
        raise ValueError(f"group code {codes.max()} is out of range for {n_groups} groups.")
    kept = np.flatnonzero(codes >= 0)
    indicator = sp.csr_matrix(
        (np.ones(kept.size), (codes[kept], kept)), shape=(n_groups, codes.size)
    )

    def _sum(values) -> np.ndarray:
        out = indicator @ values
        return np.asarray(out.toarray() if sp.issparse(out) else out, dtype=np.float64)

    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64)
        total_sq = _sum(X.multiply(X)) if squares else None
    else:
        X = np.asarray(X, dtype=np.float64)
        total_sq = _sum(X * X) if squares else None
    counts = np.bincount(codes[kept], minlength=n_groups).astype(np.int64)
    return counts, _sum(X), total_sq


def group_means(X, codes: np.ndarray, n_groups: int | None = None) -> np.ndarray:
    """Mean row of ``X`` for each group code, as a dense ``(n_groups, n_genes)`` float64 array.

    Parameters
    ----------
    X
        Cells x genes, dense or any scipy sparse format.
    codes
        Group of each row, integers in ``[0, n_groups)``.
    n_groups
        Number of groups (default ``codes.max() + 1``). Empty groups get a row of NaN.
    """
    counts, total, _ = group_sums(X, codes, n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        return total / counts[:, None]


@dataclass(frozen=True)
class GroupStats:
    """Per-gene moments of one group of cells.

    Attributes
    ----------
    n
        Number of cells.
    mean, var
        Per-gene mean and unbiased variance (``var`` is 0 when ``n < 2``; both are 0 when
        ``n == 0``).
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
        counts, total, total_sq = group_sums(X, np.zeros(X.shape[0], np.int64), 1, squares=True)
        return cls.from_sums(int(counts[0]), total[0], total_sq[0])


class GroupAccumulator:
    """Count, per-gene sum and per-gene sum of squares of every group, block by block.

    Sums are float64; the result does not depend on how the cells were split into blocks (up to
    float rounding).

    Parameters
    ----------
    n_groups, n_genes
        Sizes; group ``-1`` means "in no group".
    """

    def __init__(self, n_groups: int, n_genes: int):
        self.n = np.zeros(n_groups, dtype=np.int64)
        self.total = np.zeros((n_groups, n_genes), dtype=np.float64)
        self.total_sq = np.zeros((n_groups, n_genes), dtype=np.float64)

    def add(self, values, groups: np.ndarray) -> None:
        """Add a block of cells (rows of ``values``, dense or sparse) to their ``groups``."""
        groups = np.asarray(groups, dtype=np.int64)
        if values.shape[0] != len(groups):
            raise ValueError(f"{values.shape[0]} rows but {len(groups)} group labels.")
        counts, total, total_sq = group_sums(values, groups, len(self.n), squares=True)
        self.n += counts
        self.total += total
        self.total_sq += total_sq

    def mean(self, group: int) -> np.ndarray:
        """Mean expression of ``group`` (zeros for an empty group)."""
        n = self.n[group]
        return self.total[group] / n if n else np.zeros(self.total.shape[1])

    def stats(self, group: int) -> GroupStats:
        """Per-gene moments of ``group``."""
        return GroupStats.from_sums(int(self.n[group]), self.total[group], self.total_sq[group])


@dataclass(frozen=True)
class PseudoBulks:
    """Mean expression per perturbation plus the control's.

    Attributes
    ----------
    perturbations
        Perturbation labels (control excluded), sorted.
    values
        ``(n_perturbations, n_genes)`` mean expression.
    n_cells
        Cells behind each row of ``values``.
    control
        Mean expression of the control cells, ``(n_genes,)``.
    n_control
        Number of control cells.
    genes
        Gene names, in column order.
    """

    perturbations: np.ndarray
    values: np.ndarray
    n_cells: np.ndarray
    control: np.ndarray
    n_control: int
    genes: np.ndarray

    @property
    def deltas(self) -> np.ndarray:
        """Change from control, ``values - control``."""
        return self.values - self.control[None, :]

    def row(self, perturbation: str) -> np.ndarray:
        """Pseudo-bulk of one perturbation (``KeyError`` naming it when absent)."""
        hits = np.flatnonzero(self.perturbations == perturbation)
        if hits.size == 0:
            raise KeyError(f"perturbation {perturbation!r} has no cells here.")
        return self.values[hits[0]]


def pseudobulk(adata, *, pert_col: str, control: str, layer: str | None = None) -> PseudoBulks:
    """Pseudo-bulk every perturbation of ``adata`` and its control cells.

    Parameters
    ----------
    adata
        Cells x genes (log-normalized expression, as every metric here expects).
    pert_col
        ``obs`` column naming each cell's perturbation.
    control
        The label of control cells in ``pert_col``.
    layer
        Expression layer (default ``X``).

    Returns
    -------
    PseudoBulks
        One row per perturbation, sorted by label, and the control's row.
    """
    if pert_col not in adata.obs.columns:
        raise KeyError(
            f"pert_col={pert_col!r} is not a column of adata.obs; available: "
            f"{list(adata.obs.columns)}."
        )
    X = adata.X if layer is None else adata.layers[layer]
    categories, codes = group_codes(adata.obs[pert_col].to_numpy())
    if control not in set(categories):
        raise ValueError(
            f"control label {control!r} is not in adata.obs[{pert_col!r}] "
            f"(labels: {list(categories)[:10]}...). Pass the label your control cells carry."
        )
    counts, total, _ = group_sums(X, codes, len(categories))
    means = total / counts[:, None]
    is_control = categories == control
    ctrl = int(np.flatnonzero(is_control)[0])
    return PseudoBulks(
        perturbations=categories[~is_control],
        values=means[~is_control],
        n_cells=counts[~is_control],
        control=means[ctrl],
        n_control=int(counts[ctrl]),
        genes=np.asarray(adata.var_names, dtype=object),
    )
