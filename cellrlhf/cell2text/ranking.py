"""Rank each cell's expressed genes, highest expression first, with exact seeded tie-breaking.

The order of a cell's genes is defined without reference to chunking, row order, column order or
the number of worker threads, so the same cell always gives the same sentence:

1. Only expressed genes take part: stored values that are non-zero once cast to ``float32``.
   Values are compared as ``float32`` (what AnnData usually stores; two ``float64`` values closer
   than ``float32`` resolution become a tie).
2. Higher value first.
3. Ties (equal ``float32`` values, very common with counts) are ordered by a 32-bit hash of
   ``(cell, gene, seed)``, smallest first::

       fmix64(z)      = splitmix64 finaliser:
                        z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
                        z *= 0x94D049BB133111EB; z ^= z >> 31          (all mod 2**64)
       string_key(s)  = fmix64(FNV-1a-64(UTF-8 bytes of s))
       cell_key       = string_key(obs name)                       (see cell_keys)
       gene_key       = string_key(gene symbol upper-cased)        (see gene_tie_keys)
       seed_key       = fmix64(seed + 0x9E3779B97F4A7C15)
       tie            = fmix64(fmix64(cell_key ^ seed_key) ^ gene_key) >> 32

4. Equal ties (a 32-bit hash collision inside one group of equal values) are ordered by the
   upper-cased gene symbol (code point order), which is unique in a vocabulary.

So the tie order of a gene in a cell depends only on the cell's name, the gene's symbol and the
seed. The ranking kernel is a numba function, parallel over cells, and linear in the number of
expressed genes on average: the row's distinct values are found with a small hash table (count
data has few), each value group of ``m`` genes gets ``2m`` buckets addressed by the top bits of
the tie hash (uniform), one counting pass and one scatter put every gene in its bucket, and an
insertion pass orders the few genes sharing a bucket. :func:`sort_row` (one row) is shared with
the kernel that ranks and writes sentence bytes in one pass
(:mod:`cellrlhf.cell2text.sentence_kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numba import njit, prange

from cellrlhf.cell2text.thread_budget import kernel_threads
from cellrlhf.cell2text.tie_keys import (
    GeneTieKeys,
    cell_keys,
    fmix64,
    gene_tie_keys,
    mixed_cell_keys,
    seed_key,
    string_keys,
)

__all__ = [
    "GeneTieKeys",
    "RankedCells",
    "cell_keys",
    "gene_tie_keys",
    "rank_expressed",
    "seed_key",
    "string_keys",
]

_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
ROWS_PER_TASK = 64


# --------------------------------------------------------------------------- ranked cells
@dataclass(frozen=True)
class RankedCells:
    """Expressed genes of each cell in rank order (CSR-like).

    Attributes
    ----------
    indptr
        ``(n_cells + 1,)`` ``int64``; cell ``i`` owns ``genes[indptr[i]:indptr[i + 1]]``.
    genes
        ``(nnz,)`` ``int32`` vocabulary gene indices, highest expression first.
    values
        ``(nnz,)`` ``float32`` expression values in the same order.
    """

    indptr: np.ndarray
    genes: np.ndarray
    values: np.ndarray

    @property
    def n_cells(self) -> int:
        return len(self.indptr) - 1

    def __len__(self) -> int:
        return self.n_cells

    @property
    def lengths(self) -> np.ndarray:
        """Number of ranked genes of each cell."""
        return np.diff(self.indptr)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(genes, values)`` of cell ``i``."""
        start, stop = self.indptr[i], self.indptr[i + 1]
        return self.genes[start:stop], self.values[start:stop]


# --------------------------------------------------------------------------- kernels
VALUE_ZERO = -1  # value_kind of 0.0 / -0.0: not expressed
VALUE_EXPRESSED = 0  # a finite positive value
# other kinds are invalid-value flags: 1 NaN, 2 infinite, 4 negative (OR-ed per row)


@njit(inline="always")
def value_kind(bits):
    """Classify one float32 by its bits: zero, expressed, or the invalid-value flag it raises."""
    b = np.int64(bits)
    a = b & 0x7FFFFFFF
    if a == 0:
        return VALUE_ZERO
    if b < 0x7F800000:
        return VALUE_EXPRESSED
    if a > 0x7F800000:
        return 1
    if a == 0x7F800000:
        return 2
    return 4


@njit(cache=True, parallel=True, nogil=True)
def _scan_rows(indptr, vbits, top_k):
    """Per row: number of ranked genes (expressed, capped by top_k) and invalid-value flags.

    Flags: 1 NaN, 2 infinite, 4 negative.
    """
    n = len(indptr) - 1
    counts = np.empty(n, dtype=np.int64)
    flags = np.zeros(n, dtype=np.uint8)
    for r in prange(n):
        c = 0
        f = 0
        for j in range(indptr[r], indptr[r + 1]):
            kind = value_kind(vbits[j])
            if kind == VALUE_EXPRESSED:
                c += 1
            elif kind > 0:
                f |= kind
        counts[r] = c if top_k < 0 or c < top_k else top_k
        flags[r] = f
    return counts, flags


@njit(inline="always")
def _pow2_bits(n):
    b = 1
    while (1 << b) < n:
        b += 1
    return b


@njit(cache=True)
def sort_row(
    p0, p1, c, limit, indices, vbits, gene_keys, gene_order, key, key2, value_id, bucket_of,
    bucket_count, table, table_id, table_bits, table_slot, distinct, group_size, by_rank,
    group_start,
):  # fmt: skip
    """Sort one row's expressed entries; returns the number of distinct values.

    On return ``key2[:limit]`` holds ``tie << 32 | symbol order`` in rank order, and group
    ``by_rank[q]`` (value ``distinct[by_rank[q]]``) occupies ranks ``group_start[by_rank[q]]``
    onwards, ``group_size[...]`` of them.
    """
    table_mask = (1 << table_bits) - 1
    # 1. gather: tie key, and the id of the entry's value among the row's distinct values
    n = 0
    n_distinct = 0
    for j in range(p0, p1):
        b = vbits[j]
        if (np.int64(b) & 0x7FFFFFFF) == 0:
            continue
        g = indices[j]
        key[n] = ((fmix64(c ^ gene_keys[g]) >> _S32) << _S32) | np.uint64(gene_order[g])
        h = ((np.int64(b) * 0x9E3779B1) & 0xFFFFFFFF) >> (32 - table_bits)
        while True:
            t = table[h]
            if t == b:
                i = table_id[h]
                break
            if t == 0:
                table[h] = b
                table_id[h] = n_distinct
                table_slot[n_distinct] = h
                distinct[n_distinct] = b
                group_size[n_distinct] = 0
                i = n_distinct
                n_distinct += 1
                break
            h = (h + 1) & table_mask
        value_id[n] = i
        group_size[i] += 1
        n += 1
    for q in range(n_distinct):
        table[table_slot[q]] = 0
    # 2. rank the distinct values, highest first
    if n_distinct <= 32:
        for q in range(n_distinct):
            by_rank[q] = q
        for q in range(1, n_distinct):
            d = by_rank[q]
            dv = distinct[d]
            p = q - 1
            while p >= 0 and distinct[by_rank[p]] < dv:
                by_rank[p + 1] = by_rank[p]
                p -= 1
            by_rank[p + 1] = d
    else:
        ascending = np.argsort(distinct[:n_distinct])
        for q in range(n_distinct):
            by_rank[q] = ascending[n_distinct - 1 - q]
    s = 0
    for q in range(n_distinct):
        d = by_rank[q]
        group_start[d] = s
        s += group_size[d]
    # 3. bucket sort: a group of m entries owns 2m buckets; the tie (uniform) picks the bucket
    bucket_count[: 2 * n + 1] = 0
    for i in range(n):
        d = value_id[i]
        start = group_start[d]
        if start >= limit:
            bucket_of[i] = -1
            continue
        q = 2 * start + np.int64(((key[i] >> _S32) * np.uint64(2 * group_size[d])) >> _S32)
        bucket_of[i] = q
        bucket_count[q + 1] += 1
    for q in range(2 * n):
        bucket_count[q + 1] += bucket_count[q]
    for i in range(n):
        q = bucket_of[i]
        if q >= 0:
            p = bucket_count[q]
            bucket_count[q] = p + 1
            key2[p] = key[i]
    # 4. insertion sort inside each group (entries are already in bucket order)
    for q in range(n_distinct):
        d = by_rank[q]
        g0 = group_start[d]
        if g0 >= limit:
            break
        for i in range(g0 + 1, g0 + group_size[d]):
            k = key2[i]
            if key2[i - 1] <= k:
                continue
            p = i - 1
            while p >= g0 and key2[p] > k:
                key2[p + 1] = key2[p]
                p -= 1
            key2[p + 1] = k
    return n_distinct


@njit(cache=True)
def task_rows(indptr, task, n_rows):
    """First and end row of parallel task ``task`` (``ROWS_PER_TASK`` rows), and the largest
    number of stored values in one of its rows (the size of its scratch)."""
    r0 = task * ROWS_PER_TASK
    r1 = min(r0 + ROWS_PER_TASK, n_rows)
    longest = 1
    for r in range(r0, r1):
        longest = max(longest, indptr[r + 1] - indptr[r])
    return r0, r1, longest


@njit(cache=True)
def row_scratch(longest):
    """Scratch arrays of :func:`sort_row` for rows of up to ``longest`` expressed genes."""
    table_bits = _pow2_bits(longest) + 1
    return (
        np.empty(longest, dtype=np.uint64),  # key
        np.empty(longest, dtype=np.uint64),  # key2
        np.empty(longest, dtype=np.int32),  # value_id
        np.empty(longest, dtype=np.int32),  # bucket_of
        np.empty(2 * longest + 1, dtype=np.int32),  # bucket_count
        np.zeros(1 << table_bits, dtype=np.uint32),  # table
        np.empty(1 << table_bits, dtype=np.int32),  # table_id
        table_bits,
        np.empty(longest, dtype=np.int64),  # table_slot
        np.empty(longest, dtype=np.uint32),  # distinct
        np.empty(longest, dtype=np.int64),  # group_size
        np.empty(longest, dtype=np.int32),  # by_rank
        np.empty(longest, dtype=np.int64),  # group_start
    )


@njit(cache=True, parallel=True, nogil=True)
def _rank_rows(
    indptr, indices, vbits, cell_mix, gene_keys, gene_order, gene_by_order, out_indptr,
    out_genes, out_vbits,
):  # fmt: skip
    n_rows = len(indptr) - 1
    n_tasks = (n_rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for task in prange(n_tasks):
        r0, r1, longest = task_rows(indptr, task, n_rows)
        (
            key, key2, value_id, bucket_of, bucket_count, table, table_id, table_bits,
            table_slot, distinct, group_size, by_rank, group_start,
        ) = row_scratch(longest)  # fmt: skip
        for r in range(r0, r1):
            base = out_indptr[r]
            limit = out_indptr[r + 1] - base
            if limit == 0:
                continue
            n_distinct = sort_row(
                indptr[r], indptr[r + 1], cell_mix[r], limit, indices, vbits, gene_keys,
                gene_order, key, key2, value_id, bucket_of, bucket_count, table, table_id,
                table_bits, table_slot, distinct, group_size, by_rank, group_start,
            )  # fmt: skip
            for p in range(limit):
                out_genes[base + p] = gene_by_order[np.int64(key2[p] & _LOW32)]
            for q in range(n_distinct):
                d = by_rank[q]
                g0 = group_start[d]
                if g0 >= limit:
                    break
                b = distinct[d]
                for p in range(g0, min(g0 + group_size[d], limit)):
                    out_vbits[base + p] = b


# --------------------------------------------------------------------------- public API
def csr_parts(X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indptr as int64 from 0, indices, data)`` of a CSR matrix or an ``(indptr, indices,
    data)`` tuple, sliced to the stored range."""
    if isinstance(X, tuple):
        indptr, indices, data = X
    else:
        if not sp.issparse(X) or X.format != "csr":
            raise TypeError(f"rank_expressed needs a CSR matrix, got {type(X).__name__}.")
        indptr, indices, data = X.indptr, X.indices, X.data
    indptr = np.asarray(indptr, dtype=np.int64)
    start = indptr[0]
    stop = indptr[-1]
    if start:
        indptr = indptr - start
    return indptr, np.asarray(indices)[start:stop], np.asarray(data)[start:stop]


def float32_bits(data: np.ndarray) -> np.ndarray:
    """``data`` as ``float32`` reinterpreted as ``uint32`` bits (no copy when already float32)."""
    data = np.asarray(data)
    if data.dtype != np.float32:
        data = data.astype(np.float32)
    return np.ascontiguousarray(data).view(np.uint32)


def rank_expressed(
    X_csr,
    keys: np.ndarray,
    *,
    genes,
    seed: int = 0,
    top_k: int | None = None,
    layer_name: str = "X",
) -> RankedCells:
    """Expressed genes of each row of ``X_csr``, highest first, ties broken by the seeded rule.

    Parameters
    ----------
    X_csr
        ``(n_cells, n_genes)`` CSR matrix whose columns are ``genes`` (vocabulary order).
    keys
        ``(n_cells,)`` ``uint64`` cell keys (:func:`cell_keys` of the obs names).
    genes
        The column genes: a :class:`GeneVocab`, a list of symbols, or :class:`GeneTieKeys`
        (precompute with :func:`gene_tie_keys` when ranking many blocks).
    seed
        Tie-breaking seed.
    top_k
        Keep at most this many genes per cell (``None``: all expressed genes).
    layer_name
        Named in the error raised for NaN, infinite or negative values.

    Returns
    -------
    RankedCells
        See the module docstring for the exact order.

    Raises
    ------
    ValueError
        When a value is NaN, infinite or negative (the message counts the cells).
    """
    tie_keys = gene_tie_keys(genes)
    indptr, indices, data = csr_parts(X_csr)
    n_cells = len(indptr) - 1
    if not isinstance(X_csr, tuple) and X_csr.shape[1] != len(tie_keys):
        raise ValueError(
            f"the matrix has {X_csr.shape[1]} columns but {len(tie_keys)} genes were given."
        )
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    if keys.shape != (n_cells,):
        raise ValueError(f"got {keys.shape[0]} cell keys for {n_cells} cells.")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}.")
    vbits = float32_bits(data)
    with kernel_threads(len(vbits)):
        counts, flags = _scan_rows(indptr, vbits, -1 if top_k is None else int(top_k))
    if flags.any():
        from cellrlhf.cell2text.expression_checks import invalid_value_error

        raise invalid_value_error(flags, layer_name)
    out_indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(counts, out=out_indptr[1:])
    nnz = int(out_indptr[-1])
    out_genes = np.empty(nnz, dtype=np.int32)
    out_vbits = np.empty(nnz, dtype=np.uint32)
    if nnz:
        cell_mix = mixed_cell_keys(keys, seed)
        with kernel_threads(len(vbits)):
            _rank_rows(
                indptr,
                indices,
                vbits,
                cell_mix,
                tie_keys.keys,
                tie_keys.order,
                tie_keys.by_order,
                out_indptr,
                out_genes,
                out_vbits,
            )
    return RankedCells(out_indptr, out_genes, out_vbits.view(np.float32))
