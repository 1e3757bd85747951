"""The ``neighbours`` decoder: per-gene lines corrected by the residuals of similar training cells.

A rank -> value line cannot tell a gene at rank 0 of a control cell from the same gene at rank 0
of a cell whose programme doubled its expression: the rank is the same. The cells whose sentences
look alike know the difference. For a decoded sentence ``x`` (the per-gene lines' values), the
``neighbours`` decoder finds the ``n_neighbors`` reference cells (training cells the decoder was
fitted on) with the most similar line-decoded profile (cosine) and adds the mean of their
residuals, measured value minus line value, gene by gene::

    decode(s) = max(0, lines(s) + mean_{c in neighbours(s)} (y_c - lines(c)))

Where the lines are right the residuals average to zero and the decoder is the per-gene one;
where a cluster of cells sits above or below its lines (an erythroid programme that raises
haemoglobin genes already at the top of the ranking) the correction follows the cluster. Only the
genes of each reference cell's sentence are stored (its ``top_k`` ranked genes and their values),
so genes beyond a sentence are not corrected. The references are training cells only, so the
decoder sees no held-out cell.

On the Norman unseen-combination folds it raises the representation ceiling from 0.90 to 0.96
``pearson_specific`` (0.81 to 0.94 on KLF1+MAP2K6); BENCHMARKS.md, "neighbour decoder".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["NeighbourCells", "line_values"]

_QUERY_BATCH = 1024


def line_values(indptr, genes, intercept, slope) -> np.ndarray:
    """The lines' value of each ranked gene: ``intercept + slope * log10(rank + 1)``, >= 0.

    ``indptr``/``genes``: cells' genes in sentence order (CSR layout); the rank of a gene is its
    0-based position in its cell.
    """
    from cellrlhf.cell2text.decoder_fit import log_rank

    genes = np.asarray(genes, dtype=np.int64)
    values = intercept[genes] + slope[genes] * log_rank(indptr)
    return np.maximum(values, 0.0).astype(np.float32)


@dataclass(frozen=True)
class NeighbourCells:
    """The reference cells of a ``neighbours`` decoder.

    Parameters
    ----------
    indptr, genes, values
        CSR layout of the cells' sentences: ``genes[indptr[i]:indptr[i + 1]]`` are cell ``i``'s
        vocabulary indices in sentence order (highest first), ``values`` their measured values.
    n_neighbors
        How many reference cells correct each decoded sentence.
    """

    indptr: np.ndarray
    genes: np.ndarray
    values: np.ndarray
    n_neighbors: int

    def __post_init__(self) -> None:
        indptr = np.asarray(self.indptr, dtype=np.int64)
        genes = np.asarray(self.genes, dtype=np.int32)
        values = np.asarray(self.values, dtype=np.float32)
        if indptr.ndim != 1 or len(indptr) < 2 or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
            raise ValueError("neighbours: indptr must start at 0 and never decrease, >= 1 cell.")
        if len(genes) != indptr[-1] or len(values) != indptr[-1]:
            raise ValueError(
                f"neighbours: {len(genes)} genes and {len(values)} values for indptr ending at "
                f"{indptr[-1]}; they must match."
            )
        if not np.all(np.isfinite(values)):
            raise ValueError("neighbours: reference values must be finite.")
        if int(self.n_neighbors) < 1:
            raise ValueError(f"n_neighbors={self.n_neighbors} must be >= 1.")
        for name, value in (("indptr", indptr), ("genes", genes), ("values", values)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "n_neighbors", int(self.n_neighbors))

    @property
    def n_cells(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def from_ranked(cls, parts, n_neighbors: int) -> NeighbourCells:
        """Concatenate ranked blocks (``indptr``, ``genes``, ``values`` of each) into one set."""
        indptrs, genes, values, offset = [np.zeros(1, dtype=np.int64)], [], [], 0
        for part in parts:
            indptr = np.asarray(part.indptr, dtype=np.int64)
            indptrs.append(indptr[1:] + offset)
            offset += int(indptr[-1])
            genes.append(np.asarray(part.genes))
            values.append(np.asarray(part.values))
        return cls(
            np.concatenate(indptrs),
            np.concatenate(genes) if genes else np.zeros(0, np.int32),
            np.concatenate(values) if values else np.zeros(0, np.float32),
            n_neighbors,
        )

    # ------------------------------------------------------------------ decoding
    def correct(self, decoded: sp.csr_matrix, intercept, slope) -> sp.csr_matrix:
        """``decoded`` (the lines' values of some sentences) plus their neighbours' residuals.

        Rows without a decoded gene stay empty. Ties in similarity go to the earlier reference
        cell, so the result does not depend on the batch a sentence is decoded in.
        """
        n_genes = decoded.shape[1]
        features, residuals = self._matrices(intercept, slope, n_genes)
        k = min(self.n_neighbors, self.n_cells)
        out = []
        for start in range(0, decoded.shape[0], _QUERY_BATCH):
            block = sp.csr_matrix(decoded[start : start + _QUERY_BATCH], dtype=np.float32)
            norms = np.sqrt(np.asarray(block.multiply(block).sum(axis=1)).ravel())
            similarity = np.asarray((block @ features.T).todense(), dtype=np.float64)
            nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
            rows = np.repeat(np.arange(block.shape[0]), k)
            weights = np.where(norms > 0, 1.0 / k, 0.0)
            mix = sp.csr_matrix(
                (np.repeat(weights, k), (rows, nearest.ravel())),
                shape=(block.shape[0], self.n_cells),
            )
            # a row without a decoded gene has no neighbours (zero weights): it stays empty
            corrected = sp.csr_matrix(block + mix @ residuals).maximum(0)
            out.append(sp.csr_matrix(corrected, dtype=np.float32))
        if not out:
            return sp.csr_matrix(decoded.shape, dtype=np.float32)
        matrix = sp.vstack(out, format="csr")
        matrix.eliminate_zeros()
        matrix.sort_indices()
        return matrix

    def _matrices(self, intercept, slope, n_genes: int):
        """Unit-length line profiles and residuals of the reference cells (cached per lines)."""
        key = (id(intercept), id(slope), n_genes)
        cached = self.__dict__.get("_matrices_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        lines = line_values(self.indptr, self.genes, intercept, slope)
        shape = (self.n_cells, n_genes)
        profile = sp.csr_matrix((lines, self.genes, self.indptr), shape=shape, dtype=np.float64)
        norms = np.sqrt(np.asarray(profile.multiply(profile).sum(axis=1)).ravel())
        scale = sp.diags(np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0))
        residual = sp.csr_matrix(
            (self.values - lines, self.genes, self.indptr), shape=shape, dtype=np.float64
        )
        result = (sp.csr_matrix(scale @ profile), residual)
        object.__setattr__(self, "_matrices_cache", (key, result))
        return result

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {
            "n_neighbors": self.n_neighbors,
            "indptr": [int(v) for v in self.indptr],
            "genes": [int(v) for v in self.genes],
            # the shortest text that reads back as the same float32
            "values": [float(np.format_float_positional(v, unique=True)) for v in self.values],
        }

    @classmethod
    def from_dict(cls, payload: dict) -> NeighbourCells:
        return cls(payload["indptr"], payload["genes"], payload["values"], payload["n_neighbors"])
