"""Per-group sums of expression, accumulated block by block (pseudo-bulks and Welch moments)."""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

from cellrlhf.data.de import GroupStats

__all__ = ["GroupAccumulator"]


@numba.njit(cache=True)
def _accumulate(indptr, indices, data, groups, total, total_sq):  # pragma: no cover - numba
    for row in range(len(indptr) - 1):
        group = groups[row]
        if group < 0:
            continue
        for j in range(indptr[row], indptr[row + 1]):
            value = np.float64(data[j])
            total[group, indices[j]] += value
            total_sq[group, indices[j]] += value * value


class GroupAccumulator:
    """Count, per-gene sum and per-gene sum of squares of every group of cells.

    Sums are float64 and added cell by cell in row order, so the result does not depend on how
    the cells were split into blocks.

    Parameters
    ----------
    n_groups, n_genes
        Sizes; group ``-1`` means "in no group".
    """

    def __init__(self, n_groups: int, n_genes: int):
        self.n = np.zeros(n_groups, dtype=np.int64)
        self.total = np.zeros((n_groups, n_genes), dtype=np.float64)
        self.total_sq = np.zeros((n_groups, n_genes), dtype=np.float64)

    def add(self, values: sp.csr_matrix, groups: np.ndarray) -> None:
        """Add a block of cells (rows of ``values``) to their ``groups``."""
        values = sp.csr_matrix(values)
        groups = np.asarray(groups, dtype=np.int64)
        if values.shape[0] != len(groups):
            raise ValueError(f"{values.shape[0]} rows but {len(groups)} group labels.")
        _accumulate(values.indptr, values.indices, values.data, groups, self.total, self.total_sq)
        self.n += np.bincount(groups[groups >= 0], minlength=len(self.n))

    def mean(self, group: int) -> np.ndarray:
        """Mean expression of ``group`` (zeros for an empty group)."""
        n = self.n[group]
        return self.total[group] / n if n else np.zeros(self.total.shape[1])

    def stats(self, group: int) -> GroupStats:
        """Per-gene moments of ``group``."""
        return GroupStats.from_sums(int(self.n[group]), self.total[group], self.total_sq[group])
