"""Stream the selected cells' expression in vocabulary gene order, in blocks.

Blocks come from cell2text's own reader (:func:`~cellrlhf.cell2text.encoding.iter_csr_blocks`:
in-memory, backed or h5py matrices, CSR/CSC/dense). Each block holds the values sentences are
ranked on (the layer mapped onto the vocabulary) and the values references, differential
expression and the decoder use (the same after the configured transform). The two only differ
with ``transform="log1p_cp10k"``, which does not change any cell's ranking.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = [
    "ExpressionBlock",
    "Float32Rows",
    "as_supported_dtype",
    "iter_expression_blocks",
    "transform_block",
    "log1p_scale",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpressionBlock:
    """One block of selected cells.

    Attributes
    ----------
    cells
        Positions of the block's cells among the selected cells (0-based, increasing).
    ranked_values
        Expression used for ranking (vocabulary columns, float32 CSR; may share memory with
        the source matrix: never modified).
    log1p_scale
        For ``transform="log1p_cp10k"``: per-cell ``1e4 / total`` (the transformed value is
        ``log1p(value * scale)``); ``None`` when values are used as they are.
    """

    cells: np.ndarray
    ranked_values: sp.csr_matrix
    log1p_scale: np.ndarray | None = None

    def values(self, rows: np.ndarray | None = None) -> sp.csr_matrix:
        """Transformed expression of the block (or of its ``rows``), float32 CSR."""
        block = self.ranked_values if rows is None else self.ranked_values[rows]
        if self.log1p_scale is None:
            return block
        scale = self.log1p_scale if rows is None else self.log1p_scale[rows]
        return _log1p_scaled(block, scale)


class Float32Rows:
    """A dense matrix whose rows are read as float32 (for float16 data scipy cannot hold).

    Parameters
    ----------
    matrix
        A dense numpy array or h5py dataset; row slices are converted when read.
    """

    format = "dense"

    def __init__(self, matrix) -> None:
        self.matrix = matrix
        self.shape = tuple(matrix.shape)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, index):
        return np.asarray(self.matrix[index], dtype=np.float32)

    def __len__(self) -> int:
        return self.shape[0]


def as_supported_dtype(matrix, layer_name: str = "X"):
    """``matrix`` itself, or read as float32 when its dtype is float16 (with a log line).

    scipy's sparse matrices have no float16; dense float16 rows are converted as they are read,
    sparse float16 matrices (in memory) once.
    """
    dtype = getattr(matrix, "dtype", None)
    if dtype is None or np.dtype(dtype) != np.float16:
        return matrix
    logger.info("%s is float16: reading its values as float32.", layer_name)
    if sp.issparse(matrix):
        return matrix.astype(np.float32)
    if getattr(matrix, "format", None) in {"csr", "csc"}:  # a sparse dataset on disk
        return matrix.to_memory().astype(np.float32)
    return Float32Rows(matrix)


def log1p_scale(totals: np.ndarray) -> np.ndarray:
    """``1e4 / total`` per cell (0 for empty cells), float32."""
    totals = np.asarray(totals, dtype=np.float64)
    return np.divide(1e4, totals, out=np.zeros(len(totals)), where=totals > 0).astype(np.float32)


def transform_block(block: sp.csr_matrix, transform: str, totals: np.ndarray | None = None):
    """Apply ``"none"`` or ``"log1p_cp10k"`` (per-cell ``log1p(x / total * 1e4)``)."""
    if transform == "none":
        return block
    if transform != "log1p_cp10k":
        raise ValueError(f"unknown transform {transform!r}.")
    if totals is None:
        totals = np.asarray(block.sum(axis=1)).ravel()
    return _log1p_scaled(block, log1p_scale(totals))


def _log1p_scaled(block: sp.csr_matrix, scale: np.ndarray) -> sp.csr_matrix:
    per_value = np.repeat(np.asarray(scale, dtype=np.float32), np.diff(block.indptr))
    with np.errstate(invalid="ignore"):  # negative input is reported by the sentence encoder
        data = np.log1p(block.data.astype(np.float32, copy=False) * per_value)
    # the structure is shared with the input (never modified by the data stage)
    return sp.csr_matrix((data, block.indices, block.indptr), shape=block.shape, copy=False)


def iter_expression_blocks(
    matrix,
    rows: np.ndarray,
    *,
    mapping,
    transform: str = "none",
    chunk_size: int = 4096,
    layer_name: str = "X",
) -> Iterator[ExpressionBlock]:
    """Blocks of the cells at source positions ``rows`` (sorted, unique), in order.

    Parameters
    ----------
    matrix
        The source expression matrix (``ExpressionSource.matrix``).
    rows
        Sorted source row positions of the selected cells.
    mapping
        The :class:`~cellrlhf.cell2text.vocab.GeneMapping` onto the vocabulary.
    transform
        See :func:`transform_block`; totals are taken over all of the source's genes.
    chunk_size
        Source rows read at a time.
    layer_name
        Kept for error messages of callers; invalid values (NaN, infinite, negative) are
        reported by the sentence encoder, which sees every block before anything is stored.
    """
    from cellrlhf.cell2text.encoding import iter_csr_blocks

    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and np.any(np.diff(rows) <= 0):
        raise ValueError("rows must be sorted and unique.")
    for start, block in iter_csr_blocks(matrix, chunk_size):
        stop = start + block.shape[0]
        lo, hi = np.searchsorted(rows, [start, stop])
        if lo == hi:
            continue
        if hi - lo != block.shape[0]:
            block = block[rows[lo:hi] - start]
        scale = None
        if transform == "log1p_cp10k":
            scale = log1p_scale(np.asarray(block.sum(axis=1)).ravel())
        elif transform != "none":
            raise ValueError(f"unknown transform {transform!r}.")
        mapped = mapping.apply(block)
        if not sp.issparse(mapped) or mapped.format != "csr" or mapped.dtype != np.float32:
            mapped = sp.csr_matrix(mapped, dtype=np.float32)
        yield ExpressionBlock(np.arange(lo, hi, dtype=np.int64), mapped, scale)
