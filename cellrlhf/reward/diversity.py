"""Diversity of generated cells: the guard against a policy that collapses onto one signature.

Fidelity of a pseudo-bulk keeps rising while a policy learns to emit a single sentence; these
numbers fall. Every evaluation and every RL log reports them next to fidelity.

- ``distinct_fraction``: distinct cells / cells, within each group (prompt), averaged over
  groups. 1.0 = all different; ``1/G`` = one cell repeated. ``diversity_metrics`` compares
  decoded rows (two sentences that differ only by unknown or repeated words are the same cell);
  ``distinct_fraction`` compares sentence texts.
- ``token_entropy``: Shannon entropy (bits) of the gene-word distribution pooled over a group's
  sentences, averaged over groups. A repeated signature of ``L`` genes gives ``log2(L)``;
  varied sentences give more.
- ``unique_gene_fraction``: distinct genes used in a group / vocabulary size, averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

__all__ = [
    "DiversityMetrics",
    "distinct_fraction",
    "distinct_rows_fraction",
    "token_entropy",
    "diversity_metrics",
]


def _codes_or_single(codes: np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    if codes is None:
        return np.zeros(n, dtype=np.int64), 1 if n else 0
    codes = np.asarray(codes, dtype=np.int64)
    if codes.shape != (n,):
        raise ValueError(f"codes has shape {codes.shape}; expected ({n},).")
    return codes, int(codes.max()) + 1 if n else 0


def distinct_fraction(sentences: Sequence[str], codes: np.ndarray | None = None) -> np.ndarray:
    """Distinct sentences / sentences per group (``codes``: group of each sentence).

    Sentences are compared after whitespace normalization and upper-casing (how they parse).
    """
    codes, n_groups = _codes_or_single(codes, len(sentences))
    if n_groups == 0:
        return np.zeros(0)
    keys = np.fromiter((hash(" ".join(s.split()).upper()) for s in sentences), np.int64)
    pairs = np.unique(np.stack([codes, keys], axis=1), axis=0)
    distinct = np.bincount(pairs[:, 0], minlength=n_groups)
    total = np.bincount(codes, minlength=n_groups)
    return np.where(total > 0, distinct / np.maximum(total, 1), np.nan)


def distinct_rows_fraction(matrix, codes: np.ndarray | None = None) -> np.ndarray:
    """Distinct rows / rows per group, for a cells x genes matrix (dense or sparse).

    Rows are compared through two random projections (identical rows always match; distinct
    rows collide with probability ~0).
    """
    codes, n_groups = _codes_or_single(codes, matrix.shape[0])
    if n_groups == 0:
        return np.zeros(0)
    rng = np.random.default_rng(0)
    proj = np.asarray(matrix @ rng.standard_normal((matrix.shape[1], 2)), dtype=np.float64)
    keys = np.column_stack([codes.astype(np.float64), proj])
    distinct = np.bincount(np.unique(keys, axis=0)[:, 0].astype(np.int64), minlength=n_groups)
    total = np.bincount(codes, minlength=n_groups)
    return np.where(total > 0, distinct / np.maximum(total, 1), np.nan)


def _group_gene_counts(gene_matrix, codes: np.ndarray, n_groups: int) -> sp.csr_matrix:
    """Occurrences of each gene per group, from the non-zero pattern of a cells x genes matrix."""
    pattern = sp.csr_matrix(gene_matrix, copy=True)
    pattern.data = np.ones_like(pattern.data, dtype=np.float64)
    pattern.eliminate_zeros()
    indicator = sp.csr_matrix(
        (np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_groups, codes.size)
    )
    return sp.csr_matrix(indicator @ pattern)


def token_entropy(gene_matrix, codes: np.ndarray | None = None) -> np.ndarray:
    """Entropy (bits) of the pooled gene distribution in each group.

    Parameters
    ----------
    gene_matrix
        Cells x genes; a gene counts once per cell where the entry is non-zero (decoded
        expression, or a 0/1 occurrence matrix).
    codes
        Group of each cell (default: one group).
    """
    codes, n_groups = _codes_or_single(codes, gene_matrix.shape[0])
    counts = _group_gene_counts(gene_matrix, codes, n_groups)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    rows = np.repeat(np.arange(n_groups), np.diff(counts.indptr))
    p = counts.data / np.maximum(totals[rows], 1.0)
    terms = -p * np.log2(np.where(p > 0, p, 1.0))
    return np.bincount(rows, weights=terms, minlength=n_groups)


@dataclass(frozen=True)
class DiversityMetrics:
    """Group-averaged diversity of a batch of generated cells."""

    distinct_fraction: float
    token_entropy: float
    unique_gene_fraction: float
    n_groups: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in asdict(self).items()}


def diversity_metrics(gene_matrix, codes: np.ndarray | None = None) -> DiversityMetrics:
    """All diversity numbers of a cells x genes matrix (decoded cells, or predicted cells)."""
    codes, n_groups = _codes_or_single(codes, gene_matrix.shape[0])
    if n_groups == 0:
        return DiversityMetrics(float("nan"), float("nan"), float("nan"), 0)
    counts = _group_gene_counts(gene_matrix, codes, n_groups)
    unique = np.diff(counts.indptr) / max(gene_matrix.shape[1], 1)
    return DiversityMetrics(
        distinct_fraction=float(np.nanmean(distinct_rows_fraction(gene_matrix, codes))),
        token_entropy=float(np.mean(token_entropy(gene_matrix, codes))),
        unique_gene_fraction=float(np.mean(unique)),
        n_groups=n_groups,
    )
