"""Checks of the source expression before a build plans anything from it.

Two mistakes give training data that looks right and is not:

* ``transform: log1p_cp10k`` on values that are already log-scale (log1p of normalized counts)
  logs them a second time. :func:`check_transform_fits` looks at a sample of cells and refuses
  when the values are non-integer and small, the signature of log1p-normalized data.
* Cells without any expressed gene have empty sentences (``<cell> </cell>``) that would still be
  paired with answers. :func:`drop_empty_cells` removes them from the selected rows before
  anything is planned, so they never become examples; the build logs and records the count.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

__all__ = [
    "LOG_SCALE_MAX",
    "ExpressionScaleError",
    "ValueSample",
    "check_transform_fits",
    "drop_empty_cells",
    "nonzero_per_row",
    "sample_values",
]

logger = logging.getLogger(__name__)

#: Largest value that log-scale data plausibly holds: log1p of 1e6 (CP10k tops out near 1e4,
#: log1p(1e4) = 9.2; log2 or CPM scales still stay well below this).
LOG_SCALE_MAX = 20.0
_SAMPLE_ROWS = 256  # rows read at each of three places (start, middle, end)


class ExpressionScaleError(ValueError):
    """The configured transform does not fit the scale of the expression values."""


class ValueSample:
    """Non-zero values of a few cells and what they say about the scale.

    Parameters
    ----------
    values
        The sampled non-zero values (float64).
    """

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.float64)

    @property
    def max(self) -> float:
        return float(self.values.max()) if len(self.values) else 0.0

    @property
    def non_integer_fraction(self) -> float:
        if not len(self.values):
            return 0.0
        finite = self.values[np.isfinite(self.values)]
        return float(np.mean(np.abs(finite - np.round(finite)) > 1e-6)) if len(finite) else 0.0

    def looks_log_scale(self) -> bool:
        """Non-integer values (more than 1 %) and a maximum below :data:`LOG_SCALE_MAX`."""
        return bool(len(self.values)) and (
            self.non_integer_fraction > 0.01 and self.max < LOG_SCALE_MAX
        )


def _rows_as_csr(matrix, start: int, stop: int) -> sp.csr_matrix:
    part = matrix[start:stop]
    if sp.issparse(part):
        return sp.csr_matrix(part)
    return sp.csr_matrix(np.asarray(part, dtype=np.float64))


def sample_values(matrix, n_rows: int = _SAMPLE_ROWS) -> ValueSample:
    """Non-zero values of up to ``3 * n_rows`` cells taken at the start, middle and end.

    Parameters
    ----------
    matrix
        Expression matrix: numpy, scipy sparse, a backed AnnData dataset or an h5py dataset.
    n_rows
        Rows read at each of the three places.
    """
    total = int(matrix.shape[0])
    starts = sorted({0, max(0, total // 2 - n_rows // 2), max(0, total - n_rows)})
    parts, done = [], 0
    for start in starts:
        start = max(start, done)
        stop = min(total, start + n_rows)
        if stop <= start:
            continue
        block = _rows_as_csr(matrix, start, stop)
        parts.append(block.data[block.data != 0])
        done = stop
    return ValueSample(np.concatenate(parts) if parts else np.zeros(0))


def check_transform_fits(matrix, transform: str, layer_name: str = "X") -> ValueSample | None:
    """Refuse ``log1p_cp10k`` on values that already look log-scale.

    Parameters
    ----------
    matrix
        The source expression matrix.
    transform
        The configured ``expression.transform``.
    layer_name
        ``"X"`` or the layer's name, for the message.

    Returns
    -------
    The value sample looked at, or ``None`` when the transform needs no check.

    Raises
    ------
    ExpressionScaleError
        ``transform="log1p_cp10k"`` and the sampled values are non-integer with a small maximum:
        they would be log-transformed twice.
    """
    if transform != "log1p_cp10k":
        return None
    sample = sample_values(matrix)
    if sample.looks_log_scale():
        where = "adata.X" if layer_name in {"X", "adata.X"} else f"layers[{layer_name!r}]"
        raise ExpressionScaleError(
            f"expression.transform is log1p_cp10k but {where} already looks log-transformed "
            f"({sample.non_integer_fraction:.0%} of the sampled non-zero values are not integers "
            f"and the largest is {sample.max:.3g} < {LOG_SCALE_MAX:g}); applying it would log the "
            "values twice. Set `expression.transform: none` to use the values as they are, or "
            "point `expression.layer` (or `source.use_raw`) at the raw counts."
        )
    return sample


def nonzero_per_row(matrix, chunk_size: int = 4096) -> np.ndarray:
    """Number of non-zero values of every row (stored entries for a CSR matrix on disk).

    In-memory matrices are counted exactly. A CSR matrix on disk is counted from its ``indptr``
    alone (no expression is read), so an explicitly stored zero counts as a value there.
    """
    if sp.issparse(matrix):
        csr = sp.csr_matrix(matrix)
        nonzero = np.concatenate([[0], np.cumsum(csr.data != 0, dtype=np.int64)])
        return nonzero[csr.indptr[1:]] - nonzero[csr.indptr[:-1]]
    if isinstance(matrix, np.ndarray):
        return np.count_nonzero(matrix, axis=1).astype(np.int64)
    if getattr(matrix, "format", None) == "csr" and hasattr(matrix, "group"):
        return np.diff(np.asarray(matrix.group["indptr"][...], dtype=np.int64))
    from cellrlhf.cell2text.encoding import iter_csr_blocks

    counts = np.zeros(int(matrix.shape[0]), dtype=np.int64)
    for start, block in iter_csr_blocks(matrix, chunk_size):
        block = sp.csr_matrix(block)
        block.eliminate_zeros()
        counts[start : start + block.shape[0]] = np.diff(block.indptr)
    return counts


def drop_empty_cells(matrix, rows: np.ndarray, layer_name: str = "X") -> tuple[np.ndarray, int]:
    """The selected ``rows`` without the cells that have no non-zero value.

    Parameters
    ----------
    matrix
        The source expression matrix.
    rows
        Sorted source rows of the selected cells.
    layer_name
        For the log line.

    Returns
    -------
    ``(kept_rows, n_dropped)``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    empty = nonzero_per_row(matrix)[rows] == 0
    n_dropped = int(np.count_nonzero(empty))
    if n_dropped:
        logger.warning(
            "dropped %d of %d selected cells with no expressed gene in %s: their sentences "
            "would be empty (manifest: source.n_cells_dropped_no_expression).",
            n_dropped,
            len(rows),
            layer_name,
        )
    return rows[~empty], n_dropped
