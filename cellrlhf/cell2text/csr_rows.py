"""A CSR matrix built a batch of rows at a time, written once into its final arrays.

The sentence decoder produces rows in batches. Stacking per-batch matrices at the end copies
every value twice into fresh memory (the batch's exact arrays, then the stacked ones); on a
virtual machine the first touch of fresh pages costs more than the decoding itself. Here each
batch is copied once, into two arrays sized from the first batch for all the rows expected (grown
by copying when a later batch does not fit) and trimmed in place (``ndarray.resize``, a
``realloc``) when the matrix is made.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cellrlhf.cell2text.decode_kernels import gather_rows

__all__ = ["CsrRowBuilder"]

_INT32_MAX = np.iinfo(np.int32).max


class CsrRowBuilder:
    """Rows of a ``float32`` CSR matrix with ``n_cols`` columns, appended in order.

    Parameters
    ----------
    n_cols
        Number of columns.
    n_rows_expected
        Rows the caller will append in all: sizes the arrays after the first batch, so that a
        run of similar batches grows them once.
    """

    def __init__(self, n_cols: int, n_rows_expected: int = 0):
        self.n_cols = int(n_cols)
        self.n_rows_expected = int(n_rows_expected)
        self.cols = np.empty(0, dtype=np.int32)
        self.vals = np.empty(0, dtype=np.float32)
        self.nnz = 0
        self._row_nnz: list[np.ndarray] = []
        self._n_rows = 0

    def _reserve(self, extra: int, new_rows: int) -> None:
        needed = self.nnz + int(extra)
        if needed <= len(self.cols):
            return
        rows_after = self._n_rows + new_rows
        projected = needed
        if rows_after and self.n_rows_expected > rows_after:
            projected = int(needed / rows_after * self.n_rows_expected * 1.02) + 1
        capacity = max(needed, projected, len(self.cols) + len(self.cols) // 4)
        # fresh arrays, not ndarray.resize: it would zero-fill (touch) the whole new capacity
        cols = np.empty(capacity, dtype=np.int32)
        vals = np.empty(capacity, dtype=np.float32)
        cols[: self.nnz] = self.cols[: self.nnz]
        vals[: self.nnz] = self.vals[: self.nnz]
        self.cols, self.vals = cols, vals

    def append_rooms(
        self, room_start: np.ndarray, cols: np.ndarray, vals: np.ndarray, stored: np.ndarray
    ) -> None:
        """Append rows held in rooms: row ``i`` is ``cols/vals[room_start[i]:][:stored[i]]``."""
        stored = np.asarray(stored, dtype=np.int64)
        total = int(stored.sum())
        self._reserve(total, len(stored))
        gather_rows(room_start, cols, vals, stored, self.cols, self.vals, self.nnz)
        self._add(stored, total)

    def append_csr(self, matrix: sp.csr_matrix) -> None:
        """Append the rows of a canonical CSR matrix (sorted indices, no duplicates)."""
        if matrix.shape[1] != self.n_cols:
            raise ValueError(f"rows of {matrix.shape[1]} columns appended to {self.n_cols}.")
        total = int(matrix.nnz)
        self._reserve(total, matrix.shape[0])
        self.cols[self.nnz : self.nnz + total] = matrix.indices[:total]
        self.vals[self.nnz : self.nnz + total] = matrix.data[:total]
        self._add(np.diff(matrix.indptr).astype(np.int64), total)

    def _add(self, row_nnz: np.ndarray, total: int) -> None:
        self._row_nnz.append(row_nnz)
        self._n_rows += len(row_nnz)
        self.nnz += total

    def to_csr(self) -> sp.csr_matrix:
        """The matrix (sorted indices); the builder's arrays become its arrays."""
        indptr = np.zeros(self._n_rows + 1, dtype=np.int64)
        if self._row_nnz:
            np.cumsum(np.concatenate(self._row_nnz), out=indptr[1:])
        self.cols.resize(self.nnz, refcheck=False)
        self.vals.resize(self.nnz, refcheck=False)
        if self.nnz <= _INT32_MAX:
            indices, indptr = self.cols, indptr.astype(np.int32)
        else:
            indices = self.cols.astype(np.int64)
        matrix = sp.csr_matrix((self.vals, indices, indptr), shape=(self._n_rows, self.n_cols))
        matrix.has_sorted_indices = True
        return matrix
