"""Fixtures for the cell2text encoder tests: sparse AnnData factories and a slow reference ranker.

The reference implements the documented ranking rule (``cellrlhf.cell2text.ranking``) with plain
Python integers and ``sorted``, so the numba kernels are checked against an obviously correct,
independent implementation.
"""

from __future__ import annotations

import string

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------- reference rule
def ref_fmix64(z: int) -> int:
    z &= _MASK64
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & _MASK64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def ref_string_key(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & _MASK64
    return ref_fmix64(h)


def ref_tie(cell_name: str, gene: str, seed: int) -> int:
    seed_key = ref_fmix64(seed + 0x9E3779B97F4A7C15)
    cell_mix = ref_fmix64(ref_string_key(cell_name) ^ seed_key)
    return ref_fmix64(cell_mix ^ ref_string_key(gene.upper())) >> 32


def ref_rank_row(values, cell_name: str, genes, seed: int = 0, top_k=None) -> list[int]:
    """Column indices of the expressed genes of one row, in the documented order."""
    values = np.asarray(values, dtype=np.float32)
    entries = [
        (-float(values[j]), ref_tie(cell_name, genes[j], seed), genes[j].upper(), j)
        for j in range(len(values))
        if values[j] != 0
    ]
    order = [j for *_, j in sorted(entries)]
    return order if top_k is None else order[:top_k]


def ref_sentences(X, obs_names, genes, seed: int = 0, top_k=None) -> list[str]:
    dense = X.toarray() if sp.issparse(X) else np.asarray(X)
    return [
        " ".join(genes[j] for j in ref_rank_row(row, str(name), genes, seed, top_k))
        for row, name in zip(dense, obs_names, strict=True)
    ]


class Reference:
    """The reference rule, handed to tests as a fixture."""

    fmix64 = staticmethod(ref_fmix64)
    string_key = staticmethod(ref_string_key)
    tie = staticmethod(ref_tie)
    rank_row = staticmethod(ref_rank_row)
    sentences = staticmethod(ref_sentences)


@pytest.fixture(scope="session")
def reference() -> Reference:
    return Reference()


# --------------------------------------------------------------------------- data factories
def gene_symbols(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct symbol-like names of 2-12 characters (some longer than 16 for the writer)."""
    rng = np.random.default_rng(seed)
    alphabet = list(string.ascii_uppercase + string.digits)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        length = int(rng.integers(2, 13)) if rng.random() > 0.05 else int(rng.integers(16, 24))
        name = "".join(rng.choice(list(string.ascii_uppercase), 1)) + "".join(
            rng.choice(alphabet, length - 1)
        )
        if name.upper() not in seen:
            seen.add(name.upper())
            names.append(name)
    return names


def counts_matrix(
    n_cells: int, n_genes: int, *, density: float = 0.3, max_count: int = 4, seed: int = 0
) -> sp.csr_matrix:
    """Sparse float32 counts in ``1..max_count``: few distinct values, heavy ties."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_cells, n_genes)) < density
    values = rng.integers(1, max_count + 1, size=(n_cells, n_genes)).astype(np.float32)
    return sp.csr_matrix(np.where(mask, values, 0).astype(np.float32))


def make_adata(
    n_cells: int = 60,
    n_genes: int = 40,
    *,
    density: float = 0.3,
    max_count: int = 4,
    seed: int = 0,
    fmt: str = "csr",
) -> ad.AnnData:
    """AnnData of tied counts with symbol var_names, obs ``cell_type`` and a ``counts`` layer."""
    X = counts_matrix(n_cells, n_genes, density=density, max_count=max_count, seed=seed)
    rng = np.random.default_rng(seed + 1)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(["T cell", "B cell", "NK"], n_cells)),
            "batch": rng.integers(0, 3, n_cells),
        },
        index=[f"cell-{seed}-{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=gene_symbols(n_genes, seed))
    adata = ad.AnnData(X=_as_format(X, fmt), obs=obs, var=var)
    adata.layers["counts"] = X.copy()
    return adata


def _as_format(X: sp.csr_matrix, fmt: str):
    if fmt == "csr":
        return X
    if fmt == "csc":
        return X.tocsc()
    if fmt == "dense":
        return X.toarray()
    raise ValueError(fmt)


class Factories:
    """Data factories, handed to tests as a fixture."""

    gene_symbols = staticmethod(gene_symbols)
    counts_matrix = staticmethod(counts_matrix)
    make_adata = staticmethod(make_adata)


@pytest.fixture(scope="session")
def factories() -> Factories:
    return Factories()


@pytest.fixture
def tied_adata() -> ad.AnnData:
    return make_adata()
