"""Refuse expression values that cannot be ranked: NaN, infinite and negative values.

A cell sentence orders genes by expression. NaN has no order, infinity swamps everything and a
negative value (z-scored or batch-corrected data) is not "expressed"; ranking any of them would
give sentences that silently mean nothing, so they raise an error that counts the cells and names
the layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numba import njit, prange

__all__ = [
    "InvalidCells",
    "InvalidExpressionError",
    "check_expression",
    "count_invalid_cells",
    "invalid_value_error",
]

NAN, INF, NEGATIVE = 1, 2, 4


class InvalidExpressionError(ValueError):
    """Expression values that cannot be ranked (NaN, infinite or negative)."""


@dataclass(frozen=True)
class InvalidCells:
    """Cells with unrankable values (a cell may count under several kinds).

    Attributes
    ----------
    n_cells
        Cells checked.
    nan, inf, negative
        Cells holding at least one NaN / infinite / negative value.
    rows
        Positions of the cells with any invalid value.
    """

    n_cells: int
    nan: int
    inf: int
    negative: int
    rows: np.ndarray

    @property
    def n_invalid(self) -> int:
        return len(self.rows)

    @classmethod
    def from_flags(cls, flags: np.ndarray, row_offset: int = 0) -> InvalidCells:
        flags = np.asarray(flags, dtype=np.uint8)
        return cls(
            n_cells=len(flags),
            nan=int(np.count_nonzero(flags & NAN)),
            inf=int(np.count_nonzero(flags & INF)),
            negative=int(np.count_nonzero(flags & NEGATIVE)),
            rows=np.flatnonzero(flags) + row_offset,
        )


@njit(inline="always")
def _flag(v):
    if v != v:
        return NAN
    if v < 0:
        return INF if np.isinf(v) else NEGATIVE
    if np.isinf(v):
        return INF
    return 0


@njit(cache=True, parallel=True, nogil=True)
def _flags_by_row_csr(indptr, data):
    n = len(indptr) - 1
    flags = np.zeros(n, dtype=np.uint8)
    for r in prange(n):
        f = 0
        for j in range(indptr[r], indptr[r + 1]):
            f |= _flag(data[j])
        flags[r] = f
    return flags


@njit(cache=True)
def _flags_by_row_index(rows, data, n_rows):
    flags = np.zeros(n_rows, dtype=np.uint8)
    for j in range(len(data)):
        f = _flag(data[j])
        if f:
            flags[rows[j]] |= f
    return flags


@njit(cache=True, parallel=True, nogil=True)
def _flags_by_row_dense(X):
    n = X.shape[0]
    flags = np.zeros(n, dtype=np.uint8)
    for r in prange(n):
        f = 0
        for j in range(X.shape[1]):
            f |= _flag(X[r, j])
        flags[r] = f
    return flags


def _row_flags(X) -> np.ndarray:
    from cellrlhf.cell2text.thread_budget import kernel_threads

    n_values = X.nnz if sp.issparse(X) else int(np.prod(np.shape(X)))
    with kernel_threads(n_values):
        return _row_flags_of(X)


def _row_flags_of(X) -> np.ndarray:
    if sp.issparse(X):
        data = X.data
        if data.dtype.kind in "ub":
            return np.zeros(X.shape[0], dtype=np.uint8)
        if data.dtype.kind not in "fi":
            raise TypeError(f"expression values must be real numbers, got dtype {data.dtype}.")
        if X.format == "csr":
            return _flags_by_row_csr(np.asarray(X.indptr, dtype=np.int64), data)
        if X.format == "csc":
            return _flags_by_row_index(X.indices, data, X.shape[0])
        coo = X.tocoo()
        return _flags_by_row_index(coo.row, coo.data, X.shape[0])
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D expression matrix, got shape {X.shape}.")
    if X.dtype.kind in "ub":
        return np.zeros(X.shape[0], dtype=np.uint8)
    if X.dtype.kind not in "fi":
        raise TypeError(f"expression values must be real numbers, got dtype {X.dtype}.")
    return _flags_by_row_dense(X)


def count_invalid_cells(X) -> InvalidCells:
    """Count cells of ``X`` (dense or sparse, cells x genes) with NaN, infinite or negative values."""
    return InvalidCells.from_flags(_row_flags(X))


def _describe_layer(layer_name: str) -> str:
    if layer_name in {"X", "adata.X"}:
        return "adata.X"
    if layer_name.startswith(("layers[", "adata.")):
        return layer_name
    return f"layers[{layer_name!r}]"


def invalid_value_error(
    flags_or_counts, layer_name: str = "X", *, row_offset: int = 0, partial: bool = False
) -> InvalidExpressionError:
    """The error for invalid values, from per-row flags or an :class:`InvalidCells`.

    Parameters
    ----------
    flags_or_counts
        ``uint8`` flags per row (1 NaN, 2 infinite, 4 negative) or an :class:`InvalidCells`.
    layer_name
        ``"X"`` or the layer's name.
    row_offset
        Added to the row positions shown (rows of a chunk).
    partial
        The counts cover only the chunk read so far (streaming): say so.
    """
    bad = (
        flags_or_counts
        if isinstance(flags_or_counts, InvalidCells)
        else InvalidCells.from_flags(flags_or_counts, row_offset)
    )
    kinds = [
        f"{count} with NaN" if name == "nan" else f"{count} with {name} values"
        for name, count in (("nan", bad.nan), ("infinite", bad.inf), ("negative", bad.negative))
        if count
    ]
    scope = (
        f"in the {bad.n_cells} cells read so far (rows {row_offset}-{row_offset + bad.n_cells - 1})"
        if partial
        else f"of {bad.n_cells} cells"
    )
    shown = ", ".join(str(int(r)) for r in bad.rows[:5]) + (", ..." if bad.n_invalid > 5 else "")
    return InvalidExpressionError(
        f"{_describe_layer(layer_name)}: {bad.n_invalid} {scope} have values that cannot be "
        f"ranked ({'; '.join(kinds)}; rows {shown}). Cell sentences rank non-negative expression "
        "(raw counts, normalized or log1p values). Use the layer with counts (layer='counts'), "
        "or fix the values first, e.g. X = np.nan_to_num(X, nan=0, posinf=0) and no scaling "
        "(sc.pp.scale makes values negative). Values beyond float32 range also count as infinite."
    )


def check_expression(X, layer_name: str = "X") -> None:
    """Raise ``ValueError`` when ``X`` has NaN, infinite or negative values.

    Parameters
    ----------
    X
        Expression matrix (cells x genes): dense, or any scipy sparse format.
    layer_name
        ``"X"`` or the layer's name, for the message.

    Raises
    ------
    InvalidExpressionError
        A ``ValueError`` naming the layer and how many cells hold each kind of invalid value.
    """
    flags = _row_flags(X)
    if flags.any():
        raise invalid_value_error(flags, layer_name)
