"""Seeded tie keys of the ranking rule: stable string hashes of cell and gene names.

``fmix64`` (the splitmix64 finaliser) of ``FNV-1a-64`` of a name's UTF-8 bytes gives each cell
(:func:`cell_keys`, from its obs name) and each gene (:func:`gene_tie_keys`, from its upper-cased
symbol) a key that is the same in every process and on every platform; the seed enters through
:func:`seed_key`. How they combine into the tie order: :mod:`cellrlhf.cell2text.ranking`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from numba import njit

__all__ = [
    "GeneTieKeys",
    "cell_keys",
    "fmix64",
    "gene_tie_keys",
    "mixed_cell_keys",
    "seed_key",
    "string_keys",
]

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN64 = 0x9E3779B97F4A7C15
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


@njit(inline="always")
def fmix64(z):
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(cache=True)
def _string_keys_kernel(offsets, data):
    n = len(offsets) - 1
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        h = _FNV_OFFSET
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[j])) * _FNV_PRIME
        out[i] = fmix64(h)
    return out


def _utf8_buffers(strings: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    try:
        arr = pa.array(strings, type=pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        arr = pa.array([str(s) for s in strings], type=pa.large_string())
    if arr.null_count:
        raise ValueError("cell or gene names must not be missing (None/NaN).")
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    data_buf = arr.buffers()[2]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    )
    return offsets, data


def string_keys(strings: Sequence[object]) -> np.ndarray:
    """``fmix64(FNV-1a-64(UTF-8 bytes))`` of each string, as ``uint64``.

    Stable across processes, platforms and Python versions (unlike ``hash()``).
    """
    offsets, data = _utf8_buffers(strings)
    if len(offsets) == 1:
        return np.zeros(0, dtype=np.uint64)
    return _string_keys_kernel(offsets, data)


def cell_keys(obs_names: Sequence[object]) -> np.ndarray:
    """Stable 64-bit key of each cell, from its obs name (case-sensitive): ``string_key(name)``.

    The key, not the cell's position, seeds its tie-breaking, so a cell's sentence does not
    depend on which other cells are encoded with it or in which order.
    """
    return string_keys(obs_names)


def seed_key(seed: int) -> np.uint64:
    """``fmix64(seed + 0x9E3779B97F4A7C15)``; ``seed`` must be an integer in ``[0, 2**64)``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}.")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}.")
    z = np.array([(seed + _GOLDEN64) % 2**64], dtype=np.uint64)
    return np.uint64(_fmix64_array(z)[0])


@njit(cache=True)
def _fmix64_array(z):
    out = np.empty_like(z)
    for i in range(len(z)):
        out[i] = fmix64(z[i])
    return out


@dataclass(frozen=True)
class GeneTieKeys:
    """Per-gene data of the tie-breaking rule, in vocabulary order.

    Attributes
    ----------
    genes
        The gene symbols.
    keys
        ``uint64`` ``string_key(symbol.upper())`` of each gene.
    order
        ``uint32`` position of each gene in the code-point order of upper-cased symbols.
    by_order
        ``int32`` inverse of ``order``: the gene at each position of that order.
    """

    genes: tuple[str, ...]
    keys: np.ndarray
    order: np.ndarray
    by_order: np.ndarray

    def __len__(self) -> int:
        return len(self.genes)


def gene_tie_keys(genes) -> GeneTieKeys:
    """Tie-breaking keys of ``genes`` (a :class:`GeneVocab`, a list of symbols, or keys already).

    Symbols must be unique once upper-cased (a :class:`GeneVocab` guarantees it).
    """
    if isinstance(genes, GeneTieKeys):
        return genes
    symbols = tuple(str(g) for g in genes)
    upper = [s.upper() for s in symbols]
    by_order = np.array(sorted(range(len(upper)), key=upper.__getitem__), dtype=np.int32)
    order = np.empty(len(upper), dtype=np.uint32)
    order[by_order] = np.arange(len(upper), dtype=np.uint32)
    if len(set(upper)) != len(upper):
        raise ValueError(
            "gene symbols must be unique once upper-cased to break ties by symbol; build a "
            "GeneVocab (it resolves duplicates with duplicates='sum' or 'first')."
        )
    return GeneTieKeys(symbols, string_keys(upper), order, by_order)


def mixed_cell_keys(keys: np.ndarray, seed: int) -> np.ndarray:
    """``fmix64(cell_key ^ seed_key(seed))`` of each cell: the per-cell half of the tie hash."""
    return _fmix64_array(np.ascontiguousarray(keys, dtype=np.uint64) ^ seed_key(seed))
