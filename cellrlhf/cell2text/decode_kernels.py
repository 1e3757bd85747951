"""Compiled inner loops of the sentence decoder (numba).

:func:`decode_ascii` reads ASCII texts straight from one byte buffer: it splits on whitespace
(exactly the characters ``str.split()`` uses), looks every word up case-insensitively in a
:class:`GeneLookup` hash table and writes each text's row into its room (:func:`layout_rooms`),
in one pass; :func:`gather_rows` then copies the rows, contiguous, into the output (the rooms and
the text buffer are reused from batch to batch, see ``ExpressionDecoder.decode``). Words are read
eight bytes at a
time (SWAR): the first whitespace byte, the upper-casing of ``a-z`` and the packed key are computed
on 64-bit integers, so a typical gene symbol costs a few dozen instructions and one table probe.
Matches are exact: the stored symbol's bytes (not only a hash) are compared.

:func:`assemble_rows` applies the same decoding rules to words already looked up (the slow path
for non-ASCII text). Both call :func:`_assemble_sentence` once per sentence, so the rules live in
one place:

- a word that is not a gene (``-1``) is counted and takes no rank;
- a gene already seen in the sentence is counted as a duplicate;
- distinct genes beyond ``cap`` are counted as truncated;
- the gene at rank ``r`` gets ``intercept[g] + slope[g] * log_rank[r]``; values <= 0 are not
  stored; columns come out sorted (a per-row bitmap, no sort).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from cellrlhf.cell2text.thread_budget import kernel_threads

__all__ = [
    "GeneLookup",
    "ascii_words",
    "assemble_rows",
    "decode_ascii",
    "decode_ascii_parallel",
    "decoding_model",
    "gather_csr",
    "gather_rows",
    "layout_rooms",
    "little_endian",
    "padded_words",
    "words_buffer",
]

_U64 = np.uint64
_ONES = np.uint64(0x0101010101010101)
_HIGH = np.uint64(0x8080808080808080)
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xC2B2AE3D27D4EB4F)
_K3 = np.uint64(0x165667B19E3779F9)
_FNV_PRIME = np.uint64(1099511628211)
_LITTLE_ENDIAN = sys.byteorder == "little"


@dataclass(frozen=True)
class GeneLookup:
    """Open-addressing table of upper-cased gene symbols.

    Row ``s`` of ``slots`` is ``(bytes 0-7, bytes 8-15, length in bytes, gene + 1)`` of the
    symbol in slot ``s`` (gene ``0``: empty slot), packed little-endian; bytes beyond 16 are
    compared with ``key_bytes[key_offsets[g]:key_offsets[g + 1]]``.
    """

    slots: np.ndarray
    bits: int
    key_bytes: np.ndarray
    key_offsets: np.ndarray

    @classmethod
    def build(cls, symbols: list[str]) -> GeneLookup:
        """Table of ``symbols`` (unique once upper-cased, as in a ``GeneVocab``)."""
        keys = [s.upper().encode("utf-8") for s in symbols]
        offsets = np.zeros(len(keys) + 1, dtype=np.int64)
        np.cumsum([len(k) for k in keys], out=offsets[1:])
        key_bytes = np.frombuffer(b"".join(keys), dtype=np.uint8).copy()
        bits = 4
        while (1 << bits) < 2 * len(keys):
            bits += 1
        return cls(_fill_table(key_bytes, offsets, bits), bits, key_bytes, offsets)


def ascii_words(texts: list[str], buffer: np.ndarray | None = None) -> np.ndarray:
    """The ASCII ``texts`` joined, as little-endian ``uint64`` words with at least 16 zero bytes of
    padding: the same words as ``padded_words("".join(texts).encode())``.

    The bytes are copied text by text into ``buffer`` (``uint64``) when it is large enough, and
    the result is a view of it: a decoder reuses one buffer for all its batches, so the text
    lands on memory pages that are already mapped (first touches of fresh pages cost more than
    the copy on virtual machines). A new buffer is allocated otherwise; pass the returned
    array's ``base`` back (see :func:`words_buffer`).
    """
    n_bytes = sum(map(len, texts))
    n_words = (n_bytes + 16) // 8 + 1
    if buffer is None or len(buffer) < n_words:
        buffer = np.empty(n_words, dtype=np.uint64)
    raw = buffer.view(np.uint8)
    view = memoryview(raw)
    pos = 0
    for text in texts:
        n = len(text)
        view[pos : pos + n] = text.encode("ascii")
        pos += n
    raw[pos : n_words * 8] = 0
    return buffer[:n_words]


def words_buffer(words: np.ndarray) -> np.ndarray:
    """The whole buffer behind an :func:`ascii_words` result (to reuse for the next batch)."""
    return words if words.base is None else words.base


def padded_words(data: bytes) -> np.ndarray:
    """``data`` as little-endian ``uint64`` words, zero-padded with at least 16 spare bytes."""
    n_words = (len(data) + 16) // 8 + 1
    padded = np.zeros(n_words * 8, dtype=np.uint8)
    padded[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return padded.view(np.uint64)


# ---------------------------------------------------------------------- hashing and packing
@numba.njit(cache=True, inline="always")
def _slot_of(lo, hi, length, tail, shift):
    h = (lo * _K1) ^ ((hi + _U64(length)) * _K2) ^ (tail * _K3)
    return np.int64(h >> shift)


@numba.njit(cache=True)
def _pack_bytes(data, start, end):
    """Key of ``data[start:end]``: upper-cased bytes 0-7, 8-15, and an FNV hash of the rest."""
    lo = _U64(0)
    hi = _U64(0)
    tail = _U64(0)
    for i in range(start, end):
        c = _U64(data[i] - 32) if 97 <= data[i] <= 122 else _U64(data[i])
        offset = i - start
        if offset < 8:
            lo |= c << _U64(8 * offset)
        elif offset < 16:
            hi |= c << _U64(8 * (offset - 8))
        else:
            tail = (tail ^ c) * _FNV_PRIME
    return lo, hi, tail


@numba.njit(cache=True)
def _fill_table(key_bytes, offsets, bits):
    size = 1 << bits
    shift = _U64(64 - bits)
    slots = np.zeros((size, 4), dtype=np.uint64)
    for g in range(len(offsets) - 1):
        start, end = offsets[g], offsets[g + 1]
        lo, hi, tail = _pack_bytes(key_bytes, start, end)
        slot = _slot_of(lo, hi, end - start, tail, shift)
        while slots[slot, 3] != 0:
            slot = (slot + 1) & (size - 1)
        slots[slot, 0] = lo
        slots[slot, 1] = hi
        slots[slot, 2] = end - start
        slots[slot, 3] = g + 1
    return slots


@numba.njit(cache=True, inline="always")
def _upper8(v):
    """ASCII upper-casing of eight bytes (all < 0x80)."""
    lower = ((v + _ONES * _U64(0x1F)) ^ (v + _ONES * _U64(0x05))) & _HIGH
    return v ^ (lower >> _U64(2))


@numba.njit(cache=True, inline="always")
def _keep_low(v, n_bytes):
    """The first ``n_bytes`` (1-8) bytes of ``v``."""
    return v & ((_U64(2) << _U64(8 * n_bytes - 1)) - _U64(1))


@numba.njit(cache=True, inline="always")
def _is_space(c):
    return c == 32 or (9 <= c <= 13) or (28 <= c <= 31)


# ---------------------------------------------------------------------- the decoding rules
@numba.njit(cache=True)
def _assemble_sentence(genes, n, scratch_seen, scratch_values, model, cols, vals, k, counts, i):
    """Decode one sentence's looked-up words ``genes[:n]`` into ``cols``/``vals`` from ``k``.

    ``model`` is ``(cap, per_gene, intercept, slope, log_rank, rank_values)``. Writes
    ``counts[1:5, i]`` (valid, unknown, duplicates, truncated); returns the new ``k``. Called once
    per sentence: array arguments cost reference counting per call.
    """
    cap, per_gene, intercept, slope, log_rank, rank_values = model
    rank = 0
    unknown = 0
    duplicates = 0
    truncated = 0
    low_word = len(scratch_seen)
    high_word = -1
    for j in range(n):
        g = np.int64(genes[j])
        if g < 0:
            unknown += 1
            continue
        word = g >> 6
        bit = _U64(1) << _U64(g & 63)
        if scratch_seen[word] & bit:
            duplicates += 1
            continue
        scratch_seen[word] |= bit
        low_word = min(low_word, word)
        high_word = max(high_word, word)
        if rank >= cap:
            truncated += 1
            scratch_values[g] = 0.0
        else:
            if per_gene:
                scratch_values[g] = intercept[g] + slope[g] * log_rank[rank]
            else:
                scratch_values[g] = rank_values[rank]
            rank += 1
    # emit in column order: walk the set bits of the row's bitmap, clearing them
    for word in range(low_word, high_word + 1):
        x = scratch_seen[word]
        while x:
            g = (word << 6) + np.int64(trailing_zeros(x))
            x &= x - _U64(1)
            v = scratch_values[g]
            cols[k] = g  # branch-free: kept (k advances) only when positive; rooms have
            vals[k] = v  # one spare slot for the write after the last kept value
            k += np.int64(v > 0.0)
        scratch_seen[word] = _U64(0)
    counts[1, i] = rank
    counts[2, i] = unknown
    counts[3, i] = duplicates
    counts[4, i] = truncated
    return k


@numba.njit(cache=True, inline="always")
def _room(n_words_max, cap):
    return min(n_words_max, cap) + 1  # + 1: the spare slot of the branch-free emission


@numba.njit(cache=True)
def gather_csr(room_start, cols, vals, counts):
    """Each sentence's stored entries (``counts[5]``) copied out of its room, contiguous:
    ``indptr, cols, vals`` of a new CSR matrix, and ``counts[:5]``."""
    n = len(room_start) - 1
    indptr = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        indptr[i + 1] = indptr[i] + counts[5, i]
    out_cols = np.empty(indptr[n], dtype=np.int32)
    out_vals = np.empty(indptr[n], dtype=np.float32)
    for i in range(n):
        src = room_start[i]
        dst = indptr[i]
        out_cols[dst : dst + counts[5, i]] = cols[src : src + counts[5, i]]
        out_vals[dst : dst + counts[5, i]] = vals[src : src + counts[5, i]]
    return indptr, out_cols, out_vals, counts[:5]


@numba.njit(cache=True)
def layout_rooms(bounds, cap):
    """Room for each sentence's entries (at most one per two bytes, at most ``cap``): the
    ``(n + 1,)`` room starts and the most words one sentence can hold."""
    n = len(bounds) - 1
    room_start = np.zeros(n + 1, dtype=np.int64)
    longest = 0
    for i in range(n):
        most = (bounds[i + 1] - bounds[i] + 1) // 2
        room_start[i + 1] = room_start[i] + _room(most, cap)
        longest = max(longest, most)
    return room_start, longest


@numba.njit(cache=True)
def _decode_range(
    first, last, words, bounds, slots, bits_in_table, key_bytes, key_offsets, model,
    room_start, cols, vals, counts, seen, row_values, genes,
):  # fmt: skip
    """Decode texts ``first:last`` into their rooms of ``cols``/``vals`` and ``counts``."""
    data = words.view(np.uint8)
    mask = (1 << bits_in_table) - 1
    shift = _U64(64 - bits_in_table)
    for i in range(first, last):
        pos = bounds[i]
        end = bounds[i + 1]
        m = 0
        while pos < end:
            c = data[pos]
            if c == 32 or (9 <= c <= 13) or (28 <= c <= 31):
                pos += 1
                continue
            start = pos
            limit = end - start
            # bytes 0-7 (unaligned load from two aligned words; no shift by 64)
            q = start >> 3
            r = _U64(8 * (start & 7))
            v = (words[q] >> r) | ((words[q + 1] << _U64(1)) << (_U64(63) - r))
            low = (v - _ONES * _U64(0x21)) & ~v & _HIGH
            length = np.int64(trailing_zeros(low)) >> 3 if low else 8
            if length < 8 and length < limit and not _is_space(data[start + length]):
                length = -1  # a control character inside the word: byte loop below
            hi = _U64(0)
            tail = _U64(0)
            if length == 8 and limit > 8:
                q += 1
                v2 = (words[q] >> r) | ((words[q + 1] << _U64(1)) << (_U64(63) - r))
                low2 = (v2 - _ONES * _U64(0x21)) & ~v2 & _HIGH
                length2 = np.int64(trailing_zeros(low2)) >> 3 if low2 else 8
                if length2 == 8 and limit > 16:
                    length = -1  # longer than 16 bytes
                elif (
                    length2 < 8 and length2 < limit - 8 and not _is_space(data[start + 8 + length2])
                ):
                    length = -1
                else:
                    length2 = min(length2, limit - 8)
                    if length2 > 0:
                        hi = _upper8(_keep_low(v2, length2))
                    length = 8 + length2
            if length < 0:
                stop = start
                while stop < end and not _is_space(data[stop]):
                    stop += 1
                lo, hi, tail = _pack_bytes(data, start, stop)
                length = stop - start
            else:
                length = min(length, limit)
                lo = _upper8(_keep_low(v, min(length, 8)))
            pos = start + length
            # look the word up (exact: packed bytes and length, then bytes beyond 16)
            slot = _slot_of(lo, hi, length, tail, shift)
            g = -1
            while True:
                stored = slots[slot, 3]
                if stored == 0:
                    break
                if slots[slot, 0] == lo and slots[slot, 1] == hi and slots[slot, 2] == _U64(length):
                    candidate = np.int64(stored) - 1
                    key_start = key_offsets[candidate]
                    same = True
                    for j in range(16, length):
                        c = data[start + j]
                        if 97 <= c <= 122:
                            c -= 32
                        if c != key_bytes[key_start + j]:
                            same = False
                            break
                    if same:
                        g = candidate
                        break
                slot = (slot + 1) & mask
            genes[m] = g
            m += 1
        counts[0, i] = m
        k = _assemble_sentence(
            genes, m, seen, row_values, model, cols, vals, room_start[i], counts, i
        )
        counts[5, i] = k - room_start[i]


# ---------------------------------------------------------------------- kernels
_CHUNK = 64  # sentences per parallel task


@numba.njit(cache=True, nogil=True)
def decode_ascii(
    words, bounds, slots, bits_in_table, key_bytes, key_offsets, n_genes, model, room_start,
    longest, cols, vals,
):  # fmt: skip
    """Decode the ASCII texts ``bytes[bounds[i]:bounds[i + 1]]`` of ``words`` (see module doc)
    into their rooms of ``cols``/``vals`` (:func:`layout_rooms`; at least ``room_start[-1]``
    long, reusable between calls).

    Returns ``counts``, ``(6, n)`` ``int32``: words, valid, unknown, duplicates, truncated and
    stored entries of each text; :func:`gather_rows` makes the rooms CSR rows.
    """
    n = len(bounds) - 1
    counts = np.zeros((6, n), dtype=np.int32)
    seen = np.zeros((n_genes + 63) // 64, dtype=np.uint64)
    row_values = np.zeros(max(n_genes, 1), dtype=np.float32)
    genes = np.empty(max(longest, 1), dtype=np.int32)
    _decode_range(
        0, n, words, bounds, slots, bits_in_table, key_bytes, key_offsets, model,
        room_start, cols, vals, counts, seen, row_values, genes,
    )  # fmt: skip
    return counts


@numba.njit(cache=True, parallel=True, nogil=True)
def decode_ascii_parallel(
    words, bounds, slots, bits_in_table, key_bytes, key_offsets, n_genes, model, room_start,
    longest, cols, vals,
):  # fmt: skip
    """:func:`decode_ascii` over chunks of texts in parallel threads (same output).

    Worth it for large inputs only: starting the threads costs milliseconds.
    """
    n = len(bounds) - 1
    counts = np.zeros((6, n), dtype=np.int32)
    for chunk in numba.prange((n + _CHUNK - 1) // _CHUNK):
        seen = np.zeros((n_genes + 63) // 64, dtype=np.uint64)
        row_values = np.zeros(max(n_genes, 1), dtype=np.float32)
        genes = np.empty(max(longest, 1), dtype=np.int32)
        _decode_range(
            chunk * _CHUNK, min(n, (chunk + 1) * _CHUNK), words, bounds, slots, bits_in_table,
            key_bytes, key_offsets, model, room_start, cols, vals, counts, seen, row_values,
            genes,
        )  # fmt: skip
    return counts


@numba.njit(cache=True, parallel=True, nogil=True)
def _gather_rows(room_start, cols, vals, stored, out_cols, out_vals, dst):
    for i in numba.prange(len(stored)):
        src = room_start[i]
        k = stored[i]
        out_cols[dst[i] : dst[i] + k] = cols[src : src + k]
        out_vals[dst[i] : dst[i] + k] = vals[src : src + k]


def gather_rows(room_start, cols, vals, stored, out_cols, out_vals, offset: int) -> None:
    """Copy each text's ``stored[i]`` entries from its room into ``out_cols``/``out_vals``,
    contiguously from ``offset`` (CSR order); in parallel threads for large batches."""
    stored = np.ascontiguousarray(stored, dtype=np.int64)
    dst = np.empty(len(stored), dtype=np.int64)
    if len(stored):
        dst[0] = offset
        np.cumsum(stored[:-1], out=dst[1:])
        dst[1:] += offset
    with kernel_threads(int(stored.sum())):
        _gather_rows(room_start, cols, vals, stored, out_cols, out_vals, dst)


@numba.njit(cache=True)
def assemble_rows(word_genes, starts, ends, n_genes, model):
    """Rows of sentences already looked up: sentence ``i`` is ``word_genes[starts[i]:ends[i]]``.

    Returns ``indptr, cols, vals, counts`` as :func:`decode_ascii`.
    """
    n = len(starts)
    room_start = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        room_start[i + 1] = room_start[i] + _room(ends[i] - starts[i], model[0])
    cols = np.empty(room_start[n], dtype=np.int32)
    vals = np.empty(room_start[n], dtype=np.float32)
    counts = np.zeros((6, n), dtype=np.int32)
    seen = np.zeros((n_genes + 63) // 64, dtype=np.uint64)
    row_values = np.zeros(max(n_genes, 1), dtype=np.float32)
    for i in range(n):
        counts[0, i] = ends[i] - starts[i]
        k = _assemble_sentence(
            word_genes[starts[i] : ends[i]], ends[i] - starts[i], seen, row_values, model,
            cols, vals, room_start[i], counts, i,
        )  # fmt: skip
        counts[5, i] = k - room_start[i]
    return gather_csr(room_start, cols, vals, counts)


def decoding_model(intercept, slope, cap: int) -> tuple:
    """The ``model`` tuple of the kernels: the cap and the line(s), with values per rank
    precomputed when all genes share one line."""
    intercept = np.ascontiguousarray(intercept, dtype=np.float64)
    slope = np.ascontiguousarray(slope, dtype=np.float64)
    log_rank = np.log10(np.arange(1, cap + 1, dtype=np.float64))
    shared = len(intercept) > 0 and bool(
        np.all(intercept == intercept[0]) and np.all(slope == slope[0])
    )
    rank_values = intercept[0] + slope[0] * log_rank if shared else np.zeros(0)
    return (int(cap), not shared, intercept, slope, log_rank, rank_values)


def little_endian() -> bool:
    """The SWAR path assumes little-endian words (every platform numba supports today)."""
    return _LITTLE_ENDIAN
