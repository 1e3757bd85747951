"""encode(): exact sentences, every matrix layout, scanpy conventions, bad input."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellrlhf.cell2text.encoding as encode_module
from cellrlhf.cell2text.encoding import (
    GeneNameBytes,
    encode,
    sentences_from_ranked,
    sentences_to_arrow,
)
from cellrlhf.cell2text.gene_names import GeneNameError
from cellrlhf.cell2text.ranking import RankedCells, cell_keys, rank_expressed


def small_adata() -> ad.AnnData:
    X = np.array(
        [
            [0, 5, 1, 3],  # no ties: CD8A=5, GNLY=3, MS4A1=1
            [2, 0, 0, 0],
            [0, 0, 0, 0],  # empty cell
            [1, 4, 9, 2],
        ],
        dtype=np.float32,
    )
    return ad.AnnData(
        X=sp.csr_matrix(X),
        obs=pd.DataFrame(index=["a", "b", "c", "d"]),
        var=pd.DataFrame(index=["CD3E", "CD8A", "MS4A1", "GNLY"]),
    )


def test_exact_sentences_without_ties(caplog):
    adata = small_adata()
    with caplog.at_level(logging.WARNING):
        assert encode(adata) is None
    assert list(adata.obs["cell_sentence"]) == [
        "CD8A GNLY MS4A1",
        "CD3E",
        "",
        "MS4A1 CD8A GNLY CD3E",
    ]
    empty_warnings = [r for r in caplog.records if "no expressed gene" in r.getMessage()]
    assert len(empty_warnings) == 1
    assert "1 of 4 cells" in empty_warnings[0].getMessage()
    params = adata.uns["cell_sentence"]["params"]
    assert params["n_empty"] == 1 and params["n_cells"] == 4 and params["n_genes"] == 4
    assert params["layer"] is None and params["top_k"] is None and params["seed"] == 0
    assert params["duplicates"] == "error" and params["gene_symbols"] is None
    assert params["tie_break"] == "fnv1a64-splitmix64-v1"


def test_top_k_key_added_and_copy():
    adata = small_adata()
    out = encode(adata, top_k=2, key_added="s2", copy=True)
    assert "s2" not in adata.obs and "s2" not in adata.uns  # original untouched
    assert list(out.obs["s2"]) == ["CD8A GNLY", "CD3E", "", "MS4A1 CD8A"]
    assert out.uns["s2"]["params"]["top_k"] == 2


def test_matches_reference_with_heavy_ties(reference, factories):
    adata = factories.make_adata(80, 120, density=0.5, max_count=2, seed=11)
    encode(adata, seed=123, chunk_size=17)
    expected = reference.sentences(adata.X, adata.obs_names, list(adata.var_names), seed=123)
    assert list(adata.obs["cell_sentence"]) == expected


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_chunk_size_does_not_change_sentences(tied_adata, chunk_size):
    reference = encode(tied_adata, copy=True).obs["cell_sentence"]
    other = encode(tied_adata, chunk_size=chunk_size, copy=True).obs["cell_sentence"]
    pd.testing.assert_series_equal(reference, other)


def test_row_and_column_order_do_not_change_sentences(tied_adata):
    base = encode(tied_adata, copy=True).obs["cell_sentence"]
    rng = np.random.default_rng(0)
    shuffled = tied_adata[rng.permutation(tied_adata.n_obs)][
        :, rng.permutation(tied_adata.n_vars)
    ].copy()
    other = encode(shuffled, copy=True).obs["cell_sentence"]
    pd.testing.assert_series_equal(base, other.loc[base.index])


@pytest.mark.parametrize("fmt", ["csc", "dense"])
def test_csr_csc_dense_agree(factories, fmt):
    csr = factories.make_adata(50, 30, seed=3)
    other = factories.make_adata(50, 30, seed=3, fmt=fmt)
    encode(csr)
    encode(other, chunk_size=9)
    pd.testing.assert_series_equal(csr.obs["cell_sentence"], other.obs["cell_sentence"])


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_backed_agrees_with_in_memory(factories, tmp_path, fmt):
    adata = factories.make_adata(45, 25, seed=4, fmt=fmt)
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    encode(adata)
    backed = ad.read_h5ad(path, backed="r")
    try:
        encode(backed, chunk_size=8)
        pd.testing.assert_series_equal(adata.obs["cell_sentence"], backed.obs["cell_sentence"])
        with pytest.raises(ValueError, match="backed"):
            encode(backed, copy=True)
    finally:
        backed.file.close()


def test_layer_and_int_counts(factories):
    adata = factories.make_adata(30, 20, seed=5)
    adata.layers["counts"] = sp.csr_matrix(adata.X.toarray().astype(np.int32))
    adata.X = sp.csr_matrix((30, 20), dtype=np.float32)  # X holds nothing expressed
    encode(adata, layer="counts")
    expected = encode(factories.make_adata(30, 20, seed=5), copy=True).obs["cell_sentence"]
    pd.testing.assert_series_equal(adata.obs["cell_sentence"], expected)
    assert adata.uns["cell_sentence"]["params"]["layer"] == "counts"
    with pytest.raises(KeyError, match="layer 'missing'.*available layers"):
        encode(adata, layer="missing")


def test_monotone_transforms_give_the_same_sentences(factories):
    adata = factories.make_adata(40, 60, density=0.5, max_count=9, seed=6)
    counts = adata.X.copy()
    normalized = sp.csr_matrix(counts.multiply(1e4 / counts.sum(axis=1)), dtype=np.float32)
    logged = normalized.copy()
    logged.data = np.log1p(logged.data)
    results = []
    for X in (counts, normalized, logged):
        adata.X = X
        results.append(list(encode(adata, copy=True).obs["cell_sentence"]))
    assert results[0] == results[1] == results[2]


def test_gene_symbols_column_and_ensembl_error(factories):
    adata = factories.make_adata(10, 8, seed=7)
    symbols = list(adata.var_names)
    adata.var["symbol"] = symbols
    adata.var_names = [f"ENSG{i:011d}" for i in range(8)]
    with pytest.raises(GeneNameError, match="Ensembl"):
        encode(adata)
    encode(adata, gene_symbols="symbol")
    words = {w for s in adata.obs["cell_sentence"] for w in s.split()}
    assert words and words <= set(symbols)
    assert adata.uns["cell_sentence"]["params"]["gene_symbols"] == "symbol"


def test_duplicate_symbol_policies():
    X = np.array([[1, 2, 2, 0], [3, 0, 0, 1]], dtype=np.float32)
    adata = ad.AnnData(
        X=sp.csr_matrix(X),
        obs=pd.DataFrame(index=["x", "y"]),
        var=pd.DataFrame({"symbol": ["A", "B", "b", "C"]}, index=["v1", "v2", "v3", "v4"]),
    )
    with pytest.raises(GeneNameError, match="duplicates='sum'"):
        encode(adata, gene_symbols="symbol")
    summed = encode(adata, gene_symbols="symbol", duplicates="sum", copy=True)
    assert list(summed.obs["cell_sentence"]) == ["B A", "A C"]  # B = 2 + 2 = 4
    first = encode(adata, gene_symbols="symbol", duplicates="first", copy=True)
    assert list(first.obs["cell_sentence"]) == ["B A", "A C"]  # B = 2 (first column)
    assert first.uns["cell_sentence"]["params"]["duplicates"] == "first"


@pytest.mark.parametrize(("bad", "kind"), [(np.nan, "NaN"), (np.inf, "infinite"), (-1, "negative")])
def test_invalid_values_count_every_cell_across_chunks(factories, bad, kind):
    adata = factories.make_adata(40, 10, density=0.9, seed=8)
    dense = adata.X.toarray()
    dense[[3, 17, 33], 2] = bad
    adata.layers["raw"] = sp.csr_matrix(dense)
    with pytest.raises(ValueError, match=rf"layers\['raw'\]: 3 of 40 cells.*3 with {kind}"):
        encode(adata, layer="raw", chunk_size=5)


def test_sentences_from_ranked_and_the_byte_writer(factories):
    genes = ["A", "BB", "X" * 15, "Y" * 16, "Z" * 40, "É-ü", "C"]
    rows = [[0, 1, 2, 3, 4, 5, 6], [6], [], [4, 3, 2, 1, 0], [0, 6, 0, 6, 0, 6], [5, 5]]
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    flat = np.array([g for r in rows for g in r], dtype=np.int32)
    ranked = RankedCells(indptr, flat, np.ones(len(flat), dtype=np.float32))
    expected = [" ".join(genes[g] for g in r) for r in rows]
    assert sentences_from_ranked(ranked, genes) == expected
    column = sentences_to_arrow(ranked, GeneNameBytes.from_genes(genes))
    assert column.to_pylist() == expected


def test_arrow_column_is_split_past_the_string_limit(monkeypatch):
    monkeypatch.setattr(encode_module, "_MAX_ARROW_BYTES", 20)
    genes = ["GENE1", "GENE2", "GENE3"]
    X = sp.csr_matrix(np.array([[3, 2, 1]] * 7, dtype=np.float32))
    ranked = rank_expressed(X, cell_keys([f"c{i}" for i in range(7)]), genes=genes)
    column = sentences_to_arrow(ranked, GeneNameBytes.from_genes(genes))
    assert column.num_chunks > 1
    assert column.to_pylist() == ["GENE1 GENE2 GENE3"] * 7


def test_empty_adata():
    adata = ad.AnnData(
        X=sp.csr_matrix((0, 3), dtype=np.float32), var=pd.DataFrame(index=["A", "B", "C"])
    )
    encode(adata)
    assert len(adata.obs["cell_sentence"]) == 0
    assert adata.uns["cell_sentence"]["params"]["n_cells"] == 0


def test_package_level_encode_stays_callable_after_the_encoder_module_loads():
    # the lazy export ``cellrlhf.cell2text.encoding`` was shadowed by the submodule of the same
    # name once it had been imported: the second call raised "'module' object is not callable"
    import subprocess
    import sys

    code = (
        "import anndata as ad, numpy as np\n"
        "from cellrlhf import cell2text as c2t\n"
        "a = ad.AnnData(np.array([[1.0, 0.0, 2.0]], dtype=np.float32))\n"
        "a.var_names = ['G1', 'G2', 'G3']\n"
        "c2t.encode(a)\n"
        "c2t.encode(a)\n"
        "print(a.obs['cell_sentence'].iloc[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "G3 G1"
