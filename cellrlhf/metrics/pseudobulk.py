"""Pseudo-bulks: per-group counts, sums, means and variances of cells x genes expression.

One kernel, :func:`group_sums` (per-group sums of a dense or sparse cells x genes block, in one
vectorised pass), serves :func:`group_means` / :func:`pseudobulk` (a whole matrix at once:
evaluation, baselines) and :class:`GroupAccumulator` (block by block while the data stage
streams a backed AnnData; it hands out :class:`GroupStats` for the Welch test). Example: rows
``[1, 0], [3, 2], [5, 5]`` in groups ``0, 0, 1`` have means ``[2, 1]`` and ``[5, 5]``.
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
    X, codes: np.ndarray, *, squares: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Count, per-gene sum (and sum of squares) of the rows of ``X`` in each group present.

    Sums are float64 and, for sparse ``X``, added row by row in row order (one
    :func:`numpy.bincount` over the stored values); only groups present in ``codes`` get a
    row, so a block of a few thousand cells costs the same however many groups there are.

    Parameters
    ----------
    X
        Cells x genes, dense or any scipy sparse format.
    codes
        Group of each row: integers ``>= 0``, or ``-1`` for "in no group".
    squares
        Also sum the squared values.

    Returns
    -------
    groups
        Sorted codes present (``-1`` excluded).
    counts
        ``int64`` rows per group.
    total, total_sq
        ``(len(groups), n_genes)`` sums; ``total_sq`` is ``None`` unless ``squares``.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 1 or codes.shape[0] != X.shape[0]:
        raise ValueError(f"codes has shape {codes.shape}; expected ({X.shape[0]},), one per row.")
    if codes.size and codes.min() < -1:
        raise ValueError(f"group code {codes.min()}; codes are >= 0, or -1 for no group.")
    groups, local = np.unique(codes, return_inverse=True)
    local = local.ravel() - int(groups.size and groups[0] == -1)
    groups = groups[groups >= 0]
    n_genes = X.shape[1]
    total_sq = None
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        row_of_value = np.repeat(local, np.diff(X.indptr))
        kept = row_of_value >= 0
        flat = row_of_value[kept] * n_genes + X.indices[kept]
        data = X.data[kept].astype(np.float64)
        size = groups.size * n_genes
        total = np.bincount(flat, weights=data, minlength=size).reshape(groups.size, n_genes)
        if squares:
            total_sq = np.bincount(flat, weights=data * data, minlength=size)
            total_sq = total_sq.reshape(groups.size, n_genes)
    else:
        rows = np.flatnonzero(local >= 0)
        indicator = sp.csr_matrix(
            (np.ones(rows.size), (local[rows], rows)), shape=(groups.size, codes.size)
        )
        X = np.asarray(X, dtype=np.float64)
        total = np.asarray(indicator @ X)
        total_sq = np.asarray(indicator @ (X * X)) if squares else None
    counts = np.bincount(local[local >= 0], minlength=groups.size).astype(np.int64)
    return groups, counts, total, total_sq


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
    groups, counts, total, _ = group_sums(X, codes)
    if n_groups is None:
        n_groups = int(groups[-1]) + 1 if groups.size else 0
    if groups.size and groups[-1] >= n_groups:
        raise ValueError(f"group code {groups[-1]} is out of range for {n_groups} groups.")
    means = np.full((n_groups, X.shape[1]), np.nan)
    means[groups] = total / counts[:, None]
    return means


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
        if X.shape[0] == 0:
            return cls.from_sums(0, np.zeros(X.shape[1]), np.zeros(X.shape[1]))
        _, counts, total, total_sq = group_sums(X, np.zeros(X.shape[0], np.int64), squares=True)
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
        present, counts, total, total_sq = group_sums(values, groups, squares=True)
        if present.size and present[-1] >= len(self.n):
            raise ValueError(f"group {present[-1]} is out of range for {len(self.n)} groups.")
        self.n[present] += counts
        self.total[present] += total
        self.total_sq[present] += total_sq

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
    _, counts, total, _ = group_sums(X, codes)  # every category has cells
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
