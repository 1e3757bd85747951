"""numba kernels that write cell sentences as UTF-8 bytes into one buffer.

Two routes produce the same bytes:

- :func:`sentence_lengths` + :func:`write_sentences` turn ranked cells
  (:class:`~cellrlhf.cell2text.ranking.RankedCells`) into sentences;
- :func:`rank_sentence_bytes` ranks each cell (the rule of :mod:`cellrlhf.cell2text.ranking`,
  its :func:`~cellrlhf.cell2text.ranking.sort_row`) and writes its sentence in the same pass, so
  the ranked genes are never stored. A sentence's byte length does not depend on the order of its
  genes, so every cell's place in the buffer is known before ranking: one scan of the stored
  values counts the expressed genes, sums their name lengths and flags invalid values.

Names shorter than 16 bytes are written with two unaligned 8-byte stores of the name followed by
a space and zero padding (``GeneNameBytes.words``); the padding is overwritten by the next name.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from cellrlhf.cell2text.ranking import (
    ROWS_PER_TASK,
    csr_parts,
    float32_bits,
    row_scratch,
    sort_row,
    task_rows,
)
from cellrlhf.cell2text.thread_budget import kernel_threads
from cellrlhf.cell2text.tie_keys import mixed_cell_keys

__all__ = [
    "rank_sentence_bytes",
    "sentence_lengths",
    "store_u64_unaligned",
    "write_sentences",
]

_LOW32 = np.uint64(0xFFFFFFFF)
_ABS = np.uint32(0x7FFFFFFF)
_INF = np.uint32(0x7F800000)
_SIGN = np.uint32(0x80000000)
_ZERO = np.uint32(0)
SLOT = 16  # names shorter than this are copied with two unaligned 8-byte stores


@intrinsic
def store_u64_unaligned(typingctx, buffer, position, value):
    """``buffer[position:position + 8] = value`` (little-endian), one unaligned store."""
    sig = types.void(buffer, types.int64, types.uint64)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        pointer = builder.gep(array.data, [args[1]])
        pointer = builder.bitcast(pointer, ir.IntType(64).as_pointer())
        store = builder.store(args[2], pointer)
        store.align = 1
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _put_name(out, pos, end, g, name_data, name_offsets, name_lengths, words, last):
    """Write gene ``g``'s name at ``pos`` (and a space unless ``last``); returns the new end."""
    length = name_lengths[g]
    if length < SLOT and pos + SLOT <= end:
        store_u64_unaligned(out, pos, words[g, 0])
        store_u64_unaligned(out, pos + 8, words[g, 1])
        return pos + length + 1
    for q in range(name_offsets[g], name_offsets[g + 1]):
        out[pos] = name_data[q]
        pos += 1
    if not last:
        out[pos] = 32
        pos += 1
    return pos


# --------------------------------------------------------------------------- ranked -> bytes
@njit(cache=True, parallel=True, nogil=True)
def sentence_lengths(indptr, genes, name_lengths):
    """Byte length of each sentence of ranked cells (names joined by single spaces)."""
    n = len(indptr) - 1
    out = np.empty(n, dtype=np.int64)
    for r in prange(n):
        total = 0
        for j in range(indptr[r], indptr[r + 1]):
            total += name_lengths[genes[j]]
        k = indptr[r + 1] - indptr[r]
        out[r] = total + k - 1 if k > 0 else 0
    return out


@njit(cache=True, parallel=True, nogil=True)
def write_sentences(indptr, genes, name_data, name_offsets, name_lengths, words, offsets, out):
    """Write the sentence of each ranked cell into ``out[offsets[r]:offsets[r + 1]]``."""
    n = len(indptr) - 1
    for r in prange(n):
        pos = offsets[r]
        end = offsets[r + 1]
        j1 = indptr[r + 1]
        for j in range(indptr[r], j1):
            pos = _put_name(
                out, pos, end, genes[j], name_data, name_offsets, name_lengths, words, j == j1 - 1
            )


# --------------------------------------------------------------------------- fused rank + write
@njit(inline="always")
def _scan_row(row_bits, row_genes, name_lengths):
    """One row's expressed genes, name bytes and invalid-value flags (1 NaN, 2 inf, 4 <0).

    Branch-free on 32-bit lanes (``name_lengths`` is ``int32``), so it compiles to vector code
    with gathers; the flags are those of :func:`~cellrlhf.cell2text.ranking.value_kind`.
    """
    c = np.int32(0)
    total = np.int32(0)
    f = np.int32(0)
    for j in range(len(row_bits)):
        b = row_bits[j]
        a = b & _ABS
        finite = a < _INF
        expressed = np.int32((a != _ZERO) & (b < _INF))
        c += expressed
        total += expressed * name_lengths[row_genes[j]]
        f |= np.int32(a > _INF) | (np.int32(a == _INF) << 1) | (np.int32(finite & (b > _SIGN)) << 2)
    return c, total, f


@njit(cache=True, parallel=True, nogil=True)
def _scan_sentence_rows(indptr, vbits, indices, name_lengths):
    """Per row: expressed genes, sentence byte length, invalid-value flags (:func:`_scan_row`)."""
    n = len(indptr) - 1
    counts = np.empty(n, dtype=np.int64)
    lengths = np.empty(n, dtype=np.int64)
    flags = np.zeros(n, dtype=np.uint8)
    for r in prange(n):
        p0, p1 = indptr[r], indptr[r + 1]
        c, total, f = _scan_row(vbits[p0:p1], indices[p0:p1], name_lengths)
        counts[r] = c
        lengths[r] = total + c - 1 if c > 0 else 0
        flags[r] = f
    return counts, lengths, flags


@njit(cache=True, parallel=True, nogil=True)
def _rank_write_rows(
    indptr, indices, vbits, cell_mix, gene_keys, gene_order, counts, name_data, name_offsets,
    name_lengths, words, offsets, out,
):  # fmt: skip
    """Rank each row and write its sentence; the name tables are in symbol order (the low 32
    bits of the sort keys), so the ranked keys index them directly."""
    n_rows = len(indptr) - 1
    n_tasks = (n_rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for task in prange(n_tasks):
        r0, r1, longest = task_rows(indptr, task, n_rows)
        (
            key, key2, value_id, bucket_of, bucket_count, table, table_id, table_bits,
            table_slot, distinct, group_size, by_rank, group_start,
        ) = row_scratch(longest)  # fmt: skip
        for r in range(r0, r1):
            limit = counts[r]
            if limit == 0:
                continue
            sort_row(
                indptr[r], indptr[r + 1], cell_mix[r], limit, indices, vbits, gene_keys,
                gene_order, key, key2, value_id, bucket_of, bucket_count, table, table_id,
                table_bits, table_slot, distinct, group_size, by_rank, group_start,
            )  # fmt: skip
            pos = offsets[r]
            end = offsets[r + 1]
            for p in range(limit):
                o = np.int64(key2[p] & _LOW32)  # the gene's position in symbol order
                pos = _put_name(
                    out, pos, end, o, name_data, name_offsets, name_lengths, words, p == limit - 1
                )


def rank_sentence_bytes(
    X_csr,
    keys: np.ndarray,
    *,
    tie_keys,
    names,
    seed: int = 0,
    layer_name: str = "X",
    buffer: np.ndarray | None = None,
    names_by_order=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sentences of every expressed gene of each row, ranked and written in one pass.

    Parameters
    ----------
    X_csr
        ``(n_cells, n_genes)`` CSR matrix whose columns are the genes of ``tie_keys``.
    keys
        ``(n_cells,)`` ``uint64`` cell keys (:func:`~cellrlhf.cell2text.tie_keys.cell_keys`).
    tie_keys, names
        :class:`~cellrlhf.cell2text.tie_keys.GeneTieKeys` and
        :class:`~cellrlhf.cell2text.encoding.GeneNameBytes` of the same genes.
    seed
        Tie-breaking seed.
    layer_name
        Named in the error raised for NaN, infinite or negative values.
    buffer
        ``uint8`` array to write into when it is large enough (reused between blocks to avoid
        fresh pages); the returned ``data`` is then a view of it.
    names_by_order
        ``names.permuted(tie_keys.by_order)``, precomputed when ranking many blocks.

    Returns
    -------
    offsets, data, counts
        ``(n_cells + 1,)`` ``int64`` byte offsets of the sentences in ``data`` (``uint8``), and
        the number of genes of each sentence.
    """
    indptr, indices, data = csr_parts(X_csr)
    n_cells = len(indptr) - 1
    if X_csr.shape[1] != len(tie_keys) or len(names.lengths) != len(tie_keys):
        raise ValueError(
            f"the matrix has {X_csr.shape[1]} columns but {len(tie_keys)} genes were given."
        )
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    if keys.shape != (n_cells,):
        raise ValueError(f"got {keys.shape[0]} cell keys for {n_cells} cells.")
    vbits = float32_bits(data)
    with kernel_threads(len(vbits)):
        counts, lengths, flags = _scan_sentence_rows(
            indptr, vbits, indices, names.lengths.astype(np.int32)
        )
    if flags.any():
        from cellrlhf.cell2text.expression_checks import invalid_value_error

        raise invalid_value_error(flags, layer_name)
    offsets = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    size = int(offsets[-1])
    if buffer is not None and buffer.dtype == np.uint8 and len(buffer) >= size:
        out = buffer[:size]
    else:
        out = np.empty(size, dtype=np.uint8)
    if size:
        if names_by_order is None:
            names_by_order = names.permuted(tie_keys.by_order)
        with kernel_threads(len(vbits)):
            _rank_write_rows(
                indptr, indices, vbits, mixed_cell_keys(keys, seed), tie_keys.keys,
                tie_keys.order, counts, names_by_order.data, names_by_order.offsets,
                names_by_order.lengths, names_by_order.words, offsets, out,
            )  # fmt: skip
    return offsets, out, counts
