"""Pseudo-bulks: the mean expression profile of each group of cells.

Every fidelity metric compares pseudo-bulks (one mean profile per perturbation), never single
cells. These helpers turn a cells x genes block and a label per cell into one row per label,
for dense and sparse matrices alike, with one sparse matrix product instead of a Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["PseudoBulks", "group_codes", "group_means", "pseudobulk"]


def group_codes(labels: Sequence[object] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique labels and the position of each element's label among them.

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
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 1 or codes.shape[0] != X.shape[0]:
        raise ValueError(f"codes has shape {codes.shape}; expected ({X.shape[0]},), one per row.")
    if n_groups is None:
        n_groups = int(codes.max()) + 1 if codes.size else 0
    counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
    with np.errstate(divide="ignore"):
        weights = np.where(counts[codes] > 0, 1.0 / counts[codes], 0.0)
    indicator = sp.csr_matrix(
        (weights, (codes, np.arange(codes.size))), shape=(n_groups, codes.size)
    )
    means = indicator @ X
    means = means.toarray() if sp.issparse(means) else np.asarray(means)
    means = means.astype(np.float64, copy=False)
    means[counts == 0] = np.nan
    return means


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
    means = group_means(X, codes, len(categories))
    counts = np.bincount(codes, minlength=len(categories))
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
