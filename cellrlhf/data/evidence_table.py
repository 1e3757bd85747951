"""The user's gene-similarity table (``evidence.neighbours.table``) and cosine similarity.

Format (CSV or Parquet; none ships with the package)::

    gene,dim_0,dim_1,...
    KLF1,0.12,-0.40,...
    CEBPA,0.05,0.31,...

Rows are genes; the first column holds the gene symbol (any header), every other column is a
number (an embedding dimension, or 0/1 membership of a gene set). Symbols are matched to
perturbation targets case-insensitively and must be unique; values must be finite and no row may
be all zeros (its cosine is undefined). A perturbation's vector is the mean of its targets' unit
vectors; similarity is the cosine of those vectors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellrlhf.data.evidence_config import EvidenceError

__all__ = ["GeneTable", "load_gene_table"]


@dataclass(frozen=True)
class GeneTable:
    """Unit gene vectors by upper-case symbol.

    Attributes
    ----------
    index
        Upper-case symbol -> row of ``vectors``.
    vectors
        ``(n_genes, n_dims)`` rows of norm 1.
    sha256
        Digest of the file (recorded in the manifest).
    """

    index: dict[str, int]
    vectors: np.ndarray
    sha256: str = ""

    def vector(self, targets: list[str]) -> np.ndarray | None:
        """Unit vector of a perturbation (mean of its targets'), ``None`` if a target is missing."""
        rows = [self.index.get(t.upper()) for t in targets]
        if not rows or any(r is None for r in rows):
            return None
        mean = self.vectors[rows].mean(axis=0)
        norm = float(np.linalg.norm(mean))
        return mean / norm if norm > 0 else None

    def missing(self, targets: list[str]) -> list[str]:
        """Targets with no row in the table."""
        return [t for t in targets if t.upper() not in self.index]


def load_gene_table(path: str | Path) -> GeneTable:
    """Read a gene-similarity table (see the module docstring for the format).

    Raises
    ------
    EvidenceError
        Missing file, unknown suffix, no numeric column, non-numeric or non-finite values,
        repeated symbols, or all-zero rows, each named with the fix.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise EvidenceError(
            f"evidence.neighbours.table {path} does not exist; give a CSV or Parquet of gene "
            "vectors (first column the gene symbol; see docs/evidence.md)."
        )
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame = pd.read_csv(path)
    elif suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    else:
        raise EvidenceError(
            f"evidence.neighbours.table {path}: unknown suffix {suffix!r}; use .csv or .parquet."
        )
    if frame.shape[1] < 2 or len(frame) == 0:
        raise EvidenceError(
            f"{path} needs a gene-symbol column and at least one numeric column, with rows; "
            f"got shape {frame.shape}."
        )
    symbols = frame.iloc[:, 0].astype(str).str.strip().str.upper()
    values = frame.iloc[:, 1:]
    bad_columns = [c for c in values.columns if not pd.api.types.is_numeric_dtype(values[c])]
    if bad_columns:
        raise EvidenceError(
            f"{path}: column(s) {bad_columns[:5]} are not numeric; every column after the "
            "first (the gene symbol) must hold numbers."
        )
    vectors = values.to_numpy(dtype=np.float64)
    if not np.isfinite(vectors).all():
        rows = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        raise EvidenceError(f"{path}: missing or infinite values for {list(symbols[rows][:5])}.")
    repeated = symbols[symbols.duplicated()].unique().tolist()
    if repeated:
        raise EvidenceError(
            f"{path}: gene symbol(s) {repeated[:5]} appear more than once (case-insensitive); "
            "keep one row per gene."
        )
    norms = np.linalg.norm(vectors, axis=1)
    if (norms == 0).any():
        raise EvidenceError(
            f"{path}: all-zero row(s) for {list(symbols[norms == 0][:5])} (cosine undefined); "
            "drop them."
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    index = {s: i for i, s in enumerate(symbols)}
    return GeneTable(index, vectors / norms[:, None], digest)
