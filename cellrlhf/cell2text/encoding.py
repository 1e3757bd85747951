"""Expression -> cell sentences: each cell's expressed genes, highest expression first.

:func:`encode` is the AnnData entry point (scanpy conventions). The work happens on row blocks:
:func:`iter_csr_blocks` reads CSR/CSC/dense matrices, in memory or backed on disk, a chunk of
cells at a time; :class:`SentenceEncoder` turns a block into an Arrow string column without any
per-cell Python work. With every expressed gene kept (``top_k=None``) one numba pass ranks each
cell and writes its sentence's bytes (:func:`~cellrlhf.cell2text.sentence_kernels.
rank_sentence_bytes`); with ``top_k`` the block is ranked first (:func:`~cellrlhf.cell2text.
ranking.rank_expressed`) and the kept genes written after. Both give the same bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from cellrlhf.cell2text.expression_checks import (
    InvalidCells,
    InvalidExpressionError,
    check_expression,
    count_invalid_cells,
    invalid_value_error,
)
from cellrlhf.cell2text.ranking import (
    RankedCells,
    cell_keys,
    gene_tie_keys,
    rank_expressed,
)
from cellrlhf.cell2text.sentence_kernels import (
    SLOT,
    rank_sentence_bytes,
    sentence_lengths,
    write_sentences,
)
from cellrlhf.cell2text.thread_budget import kernel_threads
from cellrlhf.cell2text.vocab import GeneVocab, gene_mapping

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "EncodedBlock",
    "GeneNameBytes",
    "SentenceEncoder",
    "check_expression",
    "encode",
    "encode_params",
    "expression_matrix",
    "iter_csr_blocks",
    "sentences_from_ranked",
    "sentences_to_arrow",
    "string_column",
    "warn_empty_cells",
]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 10_000
TIE_BREAK_RULE = "fnv1a64-splitmix64-v1"
_MAX_ARROW_BYTES = 2**31 - 1
_STRING_ROWS = 4096  # cells whose sentences encode() writes into its reused byte buffer at a time


# --------------------------------------------------------------------------- sentence bytes
@dataclass(frozen=True)
class GeneNameBytes:
    """Gene symbols pre-encoded for the sentence writer (vocabulary order).

    Attributes
    ----------
    data, offsets
        UTF-8 bytes of all symbols and the ``(n_genes + 1,)`` offsets into them.
    lengths
        Byte length of each symbol.
    words
        ``(n_genes, 2)`` ``uint64``: the symbol followed by a space, zero-padded to 16 bytes
        (used for symbols shorter than 16 bytes).
    """

    data: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    words: np.ndarray

    @classmethod
    def from_genes(cls, genes: Sequence[str]) -> GeneNameBytes:
        encoded = [str(g).encode("utf-8") for g in genes]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        padded = np.zeros((len(encoded), SLOT), dtype=np.uint8)
        short = np.flatnonzero(lengths < SLOT)
        column = np.arange(SLOT)
        inside = column < lengths[short, None]
        rows = np.broadcast_to(short[:, None], inside.shape)[inside]
        padded[rows, np.broadcast_to(column, inside.shape)[inside]] = data[
            (offsets[short, None] + column)[inside]
        ]
        padded[short, lengths[short]] = 32  # the space after the name
        return cls(data, offsets, lengths, padded.view(np.uint64).reshape(len(encoded), 2))

    def permuted(self, order: np.ndarray) -> GeneNameBytes:
        """The same names in the order ``order`` (row ``i`` is name ``order[i]``)."""
        order = np.asarray(order, dtype=np.int64)
        lengths = self.lengths[order]
        offsets = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        source = np.repeat(self.offsets[:-1][order] - offsets[:-1], lengths)
        data = self.data[source + np.arange(offsets[-1], dtype=np.int64)]
        return GeneNameBytes(data, offsets, lengths, self.words[order])


def _string_array(offsets: np.ndarray, data: np.ndarray) -> pa.Array:
    n = len(offsets) - 1
    return pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)]
    )


def sentences_to_arrow(ranked: RankedCells, names: GeneNameBytes) -> pa.ChunkedArray:
    """Space-joined gene symbols of each ranked cell, as an Arrow string column.

    The bytes are written by a parallel numba kernel into one buffer; a column larger than
    Arrow's 2 GiB string limit is split into several chunks.
    """
    with kernel_threads(len(ranked.genes)):
        lengths = sentence_lengths(ranked.indptr, ranked.genes, names.lengths)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = np.empty(int(offsets[-1]), dtype=np.uint8)
        if len(data):
            write_sentences(
                ranked.indptr,
                ranked.genes,
                names.data,
                names.offsets,
                names.lengths,
                names.words,
                offsets,
                data,
            )
    return string_column(offsets, data)


def string_column(offsets: np.ndarray, data: np.ndarray) -> pa.ChunkedArray:
    """Arrow string column of the strings ``data[offsets[i]:offsets[i + 1]]`` (no copy of
    ``data``); a column larger than Arrow's 2 GiB string limit is split into several chunks."""
    n = len(offsets) - 1
    if offsets[-1] - offsets[0] <= _MAX_ARROW_BYTES:
        lo = int(offsets[0])
        return pa.chunked_array([_string_array(offsets - lo, data[lo:])], type=pa.string())
    pieces, start = [], 0
    while start < n:
        stop = int(np.searchsorted(offsets, offsets[start] + _MAX_ARROW_BYTES, side="right")) - 1
        stop = max(stop, start + 1)
        lo, hi = int(offsets[start]), int(offsets[stop])
        pieces.append(_string_array(offsets[start : stop + 1] - lo, data[lo:hi]))
        start = stop
    return pa.chunked_array(pieces, type=pa.string())


def _to_python_strings(column: pa.ChunkedArray) -> np.ndarray:
    parts = [chunk.to_numpy(zero_copy_only=False) for chunk in column.chunks]
    if not parts:
        return np.empty(0, dtype=object)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def sentences_from_ranked(ranked: RankedCells, vocab) -> list[str]:
    """Cell sentences (space-joined symbols of ``vocab``) of ranked cells; ``""`` when empty."""
    genes = vocab.genes if isinstance(vocab, GeneVocab) else tuple(vocab)
    return list(_to_python_strings(sentences_to_arrow(ranked, GeneNameBytes.from_genes(genes))))


# --------------------------------------------------------------------------- row blocks
def expression_matrix(adata, layer: str | None):
    """``adata.X`` or ``adata.layers[layer]``, with a clear error for a missing layer."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass layer='<name>' of a layer with expression.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"layer {layer!r} is not in adata.layers; available layers: {list(adata.layers)}."
        )
    return adata.layers[layer]


def _matrix_format(matrix) -> str:
    fmt = getattr(matrix, "format", None)
    if sp.issparse(matrix) or fmt in {"csr", "csc"}:
        return str(fmt)
    return "dense"


def iter_csr_blocks(
    matrix, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[tuple[int, sp.csr_matrix]]:
    """``(start_row, CSR block)`` of ``matrix``, ``chunk_size`` rows at a time.

    ``matrix`` is a numpy array, a scipy sparse matrix, a backed AnnData matrix (CSR or CSC
    dataset) or an h5py dataset. In-memory CSR blocks share memory with ``matrix``. Backed CSR
    and dense data are read one block at a time; a CSC matrix (rows scattered over the whole
    file) is converted to CSR once, which needs it in memory.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    n_rows = int(matrix.shape[0])
    fmt = _matrix_format(matrix)
    backed = not sp.issparse(matrix) and not isinstance(matrix, np.ndarray)
    if fmt == "csc" or (sp.issparse(matrix) and fmt != "csr"):
        if backed:
            logger.warning(
                "the matrix on disk is CSC: its rows cannot be read in chunks, so it is loaded "
                "into memory once and converted to CSR. Store it as CSR for bounded memory."
            )
            matrix = matrix.to_memory()
        logger.info("converting the %s matrix to CSR (%d cells)", matrix.format, n_rows)
        matrix = sp.csr_matrix(matrix)
        backed = False
        fmt = "csr"
    for start in range(0, n_rows, chunk_size):
        stop = min(start + chunk_size, n_rows)
        if fmt == "csr" and not backed:
            yield start, _csr_view(matrix, start, stop)
        elif fmt == "csr":
            yield start, sp.csr_matrix(matrix[start:stop])
        else:
            yield start, sp.csr_matrix(np.asarray(matrix[start:stop]))


def _csr_view(X: sp.csr_matrix, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``start:stop`` of ``X`` sharing its ``indices`` and ``data`` (no copy)."""
    indptr = X.indptr[start : stop + 1]
    p0, p1 = int(indptr[0]), int(indptr[-1])
    indices = X.indices[p0:p1]
    index_dtype = np.int64 if p1 - p0 > np.iinfo(np.int32).max else indices.dtype
    block = sp.csr_matrix((stop - start, X.shape[1]), dtype=X.dtype)
    block.indptr = (indptr - p0).astype(index_dtype)
    block.indices = indices.astype(index_dtype, copy=False)
    block.data = X.data[p0:p1]
    return block


# --------------------------------------------------------------------------- block encoder
@dataclass(frozen=True)
class EncodedBlock:
    """Sentences of a block of cells.

    Attributes
    ----------
    sentences
        Arrow string column, one sentence per cell (``""`` for a cell with no expressed gene).
    n_genes
        ``int32`` number of genes in each sentence.
    """

    sentences: pa.ChunkedArray
    n_genes: np.ndarray


class SentenceEncoder:
    """Encodes blocks of cells of one gene space; build once, call per block.

    Parameters
    ----------
    vocab, mapping
        From :func:`~cellrlhf.cell2text.vocab.gene_mapping`: the block's columns are mapped
        onto ``vocab`` with ``mapping.apply`` (duplicate symbols summed or dropped).
    top_k
        Keep at most this many genes per cell.
    seed
        Tie-breaking seed.
    layer_name
        Named in errors about invalid values.
    """

    def __init__(self, vocab: GeneVocab, mapping, *, top_k=None, seed=0, layer_name="X"):
        if top_k is not None and (isinstance(top_k, bool) or int(top_k) < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}.")
        self.vocab = vocab
        self.mapping = mapping
        self.top_k = None if top_k is None else int(top_k)
        self.seed = seed
        self.layer_name = layer_name
        self.tie_keys = gene_tie_keys(vocab)
        self.names = GeneNameBytes.from_genes(vocab.genes)
        self._names_by_order: GeneNameBytes | None = None

    @property
    def names_by_order(self) -> GeneNameBytes:
        """:attr:`names` in the symbol order of the tie keys (what the fused kernel indexes)."""
        if self._names_by_order is None:
            self._names_by_order = self.names.permuted(self.tie_keys.by_order)
        return self._names_by_order

    def __call__(
        self,
        block,
        obs_names: Sequence[object],
        *,
        row_offset: int = 0,
        buffer: np.ndarray | None = None,
    ) -> EncodedBlock:
        """Sentences of the cells of ``block`` (cells x ``mapping`` columns).

        ``buffer`` (``uint8``), when large enough, receives the sentences' bytes: the returned
        column is then a view of it, valid until the buffer is reused. Raises ``ValueError`` for
        NaN, infinite or negative values, counting the block's cells (rows numbered from
        ``row_offset``).
        """
        if len(obs_names) != block.shape[0]:
            raise ValueError(f"{len(obs_names)} cell names for {block.shape[0]} cells.")
        mapped = self.mapping.apply(block)
        if not sp.issparse(mapped) or mapped.format != "csr":
            mapped = sp.csr_matrix(mapped)
        try:
            if self.top_k is None:  # every expressed gene: rank and write in one pass
                offsets, data, counts = rank_sentence_bytes(
                    mapped,
                    cell_keys(obs_names),
                    tie_keys=self.tie_keys,
                    names=self.names,
                    seed=self.seed,
                    layer_name=self.layer_name,
                    buffer=buffer,
                    names_by_order=self.names_by_order,
                )
                return EncodedBlock(string_column(offsets, data), counts.astype(np.int32))
            ranked = rank_expressed(
                mapped,
                cell_keys(obs_names),
                genes=self.tie_keys,
                seed=self.seed,
                top_k=self.top_k,
                layer_name=self.layer_name,
            )
        except InvalidExpressionError:
            bad = count_invalid_cells(block)
            if not bad.n_invalid:  # finite float64 values beyond float32 range
                raise
            raise invalid_value_error(
                InvalidCells(bad.n_cells, bad.nan, bad.inf, bad.negative, bad.rows + row_offset),
                self.layer_name,
            ) from None
        return EncodedBlock(sentences_to_arrow(ranked, self.names), ranked.lengths.astype(np.int32))


# --------------------------------------------------------------------------- AnnData API
def encode(
    adata,
    *,
    layer: str | None = None,
    top_k: int | None = None,
    gene_symbols: str | None = None,
    duplicates: str = "error",
    key_added: str = "cell_sentence",
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    copy: bool = False,
):
    """Write each cell's sentence, its expressed genes highest first, to ``obs[key_added]``.

    A cell's genes with a non-zero value are ordered by value, highest first; ties (equal
    ``float32`` values) are broken by a seeded hash of the cell's obs name and the gene's
    symbol, then by symbol (exact rule: :mod:`cellrlhf.cell2text.ranking`). A sentence thus
    depends only on the cell's own values, name and the seed: not on chunking, row or column
    order, or the number of threads.

    The ranking is invariant to monotone transforms of a cell's values: raw counts,
    ``normalize_total`` and ``log1p`` give the same sentences, except where the transform itself
    creates or removes ties (for instance ``float32`` rounding merging two close values).

    Parameters
    ----------
    adata
        AnnData, in memory (CSR, CSC or dense) or backed (``read_h5ad(path, backed="r")``,
        read in chunks of ``chunk_size`` cells).
    layer
        Layer to rank instead of ``adata.X``.
    top_k
        Keep at most this many genes per cell (``None``: every expressed gene).
    gene_symbols
        ``var`` column with gene symbols when ``var_names`` are not symbols (Ensembl IDs).
    duplicates
        Symbols repeated (case-insensitively): ``"error"``, ``"sum"`` their columns, or keep the
        ``"first"`` (see :class:`~cellrlhf.cell2text.vocab.GeneVocab`).
    key_added
        ``obs`` column for the sentences and ``uns`` key for the parameters.
    seed
        Tie-breaking seed (an integer in ``[0, 2**64)``).
    chunk_size
        Cells ranked at a time (memory only: the output does not depend on it).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    The copy when ``copy=True``, else ``None``. Sets ``obs[key_added]`` (``str``, ``""`` for a
    cell without expressed genes) and ``uns[key_added]["params"]``.

    Raises
    ------
    ValueError
        NaN, infinite or negative values (counting the cells, naming the layer).
    GeneNameError
        Ensembl IDs without ``gene_symbols``, empty or duplicated symbols.
    """
    if copy:
        if adata.isbacked:
            raise ValueError(
                "copy=True would load the whole backed AnnData into memory; use copy=False "
                "(only obs and uns are written, in memory) or write_sentences() to stream to disk."
            )
        adata = adata.copy()
    layer_name = "X" if layer is None else layer
    matrix = expression_matrix(adata, layer)
    vocab, mapping = gene_mapping(adata, gene_symbols=gene_symbols, duplicates=duplicates)
    encoder = SentenceEncoder(vocab, mapping, top_k=top_k, seed=seed, layer_name=layer_name)
    try:
        sentences, n_genes = _encode_cells(encoder, matrix, adata.obs_names, chunk_size)
    except InvalidExpressionError:
        if not adata.isbacked:
            check_expression(matrix, layer_name)  # counts every cell of the matrix
        raise
    n_empty = int(np.count_nonzero(n_genes == 0))
    warn_empty_cells(n_empty, adata.n_obs, layer_name)
    adata.obs[key_added] = pd.Series(sentences, index=adata.obs_names, dtype=object)
    adata.uns[key_added] = {
        "params": encode_params(
            layer=layer,
            top_k=top_k,
            gene_symbols=gene_symbols,
            duplicates=duplicates,
            seed=seed,
            n_cells=adata.n_obs,
            n_empty=n_empty,
            n_genes=len(vocab),
        )
    }
    return adata if copy else None


def _encode_cells(encoder: SentenceEncoder, matrix, obs_names, chunk_size: int):
    """``(sentences, n_genes)`` of every cell of ``matrix``, as Python strings and ``int32``.

    Sentences are written ``_STRING_ROWS`` cells at a time into one reused byte buffer.
    """
    obs_names = np.asarray(obs_names, dtype=object)
    sentences = np.empty(len(obs_names), dtype=object)
    n_genes = np.zeros(len(obs_names), dtype=np.int32)
    buffer = np.empty(0, dtype=np.uint8)
    for start, block in iter_csr_blocks(matrix, chunk_size):
        for sub_start in range(0, block.shape[0], _STRING_ROWS):
            sub_stop = min(sub_start + _STRING_ROWS, block.shape[0])
            first, stop = start + sub_start, start + sub_stop
            encoded = encoder(
                _csr_view(block, sub_start, sub_stop),
                obs_names[first:stop],
                row_offset=first,
                buffer=buffer,
            )
            sentences[first:stop] = _to_python_strings(encoded.sentences)
            n_genes[first:stop] = encoded.n_genes
            buffer = _reusable(buffer, encoded.sentences)
    return sentences, n_genes


def warn_empty_cells(n_empty: int, n_cells: int, layer_name: str) -> None:
    """Log a warning when ``n_empty`` of ``n_cells`` cells have no expressed gene."""
    if n_empty:
        logger.warning(
            "%d of %d cells have no expressed gene in %s; their sentences are empty.",
            n_empty,
            n_cells,
            "adata.X" if layer_name == "X" else f"layers[{layer_name!r}]",
        )


def _reusable(buffer: np.ndarray, column: pa.ChunkedArray) -> np.ndarray:
    """``buffer``, or a larger one when ``column`` did not fit in it.

    :func:`encode` writes the bytes of a few thousand sentences at a time into one buffer that it
    reuses (their Python strings are copies), so the bytes always land on memory pages that are
    already mapped: fresh pages cost more than writing the sentences.
    """
    needed = sum(chunk.buffers()[2].size for chunk in column.chunks if chunk.buffers()[2])
    if needed <= len(buffer):
        return buffer
    return np.empty(needed + needed // 4, dtype=np.uint8)


def encode_params(*, layer, top_k, gene_symbols, duplicates, seed, n_cells, n_empty, n_genes):
    """The parameters recorded in ``uns[key]["params"]`` and in a streaming manifest."""
    return {
        "layer": layer,
        "top_k": top_k,
        "gene_symbols": gene_symbols,
        "duplicates": duplicates,
        "seed": int(seed),
        "tie_break": TIE_BREAK_RULE,
        "n_cells": int(n_cells),
        "n_empty": int(n_empty),
        "n_genes": int(n_genes),
    }
