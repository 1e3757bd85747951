"""Cells given as AnnData rows, mappings or sentences become sentences in the model's vocabulary."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellrlhf.cell2text.vocab import GeneVocab
from cellrlhf.chat.cell_input import UnknownGenesError, encode_cells, is_single_cell

VOCAB = GeneVocab(("CD3E", "CD8A", "MS4A1", "LYZ", "NKG7", "GNLY"))


def _adata(X, genes, names=None, **var):
    return ad.AnnData(
        X=sp.csr_matrix(np.asarray(X, dtype=np.float32)),
        obs=pd.DataFrame(index=names or [f"c{i}" for i in range(len(X))]),
        var=pd.DataFrame(var, index=genes),
    )


def test_anndata_rows_are_ranked_and_spelled_as_the_model(caplog):
    # lower-case names and a gene the model does not know (dropped)
    adata = _adata([[5, 0, 1, 3, 0], [0, 2, 0, 0, 9]], ["cd3e", "CD8A", "ms4a1", "XIST", "nkg7"])
    with caplog.at_level(logging.INFO, logger="cellrlhf"):
        enc = encode_cells(adata, VOCAB)
    assert enc.ids == ["c0", "c1"]
    assert enc.sentences == ["CD3E MS4A1", "NKG7 CD8A"]
    assert enc.gene_overlap == pytest.approx(4 / 5)
    assert "4 of 5 genes are in the model's vocabulary" in caplog.text


def test_layer_top_k_and_gene_symbols():
    adata = _adata(
        [[1, 2, 3]],
        ["ENSG00000198851", "ENSG00000153563", "ENSG00000090382"],
        symbol=["CD3E", "CD8A", "LYZ"],
    )
    adata.layers["counts"] = sp.csr_matrix(np.array([[30, 20, 10]], dtype=np.float32))
    assert encode_cells(adata, VOCAB, gene_symbols="symbol").sentences == ["LYZ CD8A CD3E"]
    assert encode_cells(adata, VOCAB, gene_symbols="symbol", layer="counts", top_k=2).sentences == [
        "CD3E CD8A"
    ]


def test_low_and_zero_overlap():
    few = _adata([[1, 1, 1, 1, 2]], ["CD3E", "G1", "G2", "G3", "G4"])
    assert encode_cells(few, VOCAB).sentences == ["CD3E"]
    none = _adata([[1, 2]], ["G1", "G2"])
    with pytest.raises(ValueError, match="none of the data's 2 genes"):
        encode_cells(none, VOCAB)


def test_invalid_expression_is_named():
    adata = _adata([[1.0, -2.0]], ["CD3E", "LYZ"])
    with pytest.raises(ValueError, match="negative"):
        encode_cells(adata, VOCAB)
    with pytest.raises(ValueError, match="finite and >= 0"):
        encode_cells({"CD3E": 1.0, "LYZ": np.nan}, VOCAB)


def test_mappings_sentences_and_lists():
    assert encode_cells({"lyz": 2.0, "CD3E": 5.0, "NKG7": 0.0}, VOCAB).sentences == ["CD3E LYZ"]
    assert encode_cells(pd.Series({"GNLY": 1.0, "NKG7": 3.0}), VOCAB).sentences == ["NKG7 GNLY"]
    assert encode_cells("<cell> cd8a lyz </cell>", VOCAB).sentences == ["CD8A LYZ"]
    assert encode_cells(["NKG7", "CD3E"], VOCAB).sentences == ["NKG7 CD3E"]  # one cell, ranked
    many = encode_cells(["CD3E LYZ", {"GNLY": 1.0}], VOCAB)
    assert many.ids == ["cell_0", "cell_1"] and many.sentences == ["CD3E LYZ", "GNLY"]
    assert encode_cells("CD3E LYZ NKG7", VOCAB, top_k=2).sentences == ["CD3E LYZ"]


def test_single_cell_detection():
    assert is_single_cell("CD3E LYZ") and is_single_cell({"CD3E": 1}) and is_single_cell(["CD3E"])
    assert not is_single_cell(["CD3E LYZ", "NKG7"])
    assert is_single_cell(_adata([[1, 0]], ["CD3E", "LYZ"]))
    assert not is_single_cell(_adata([[1, 0], [0, 1]], ["CD3E", "LYZ"]))


def test_user_errors():
    with pytest.raises(UnknownGenesError, match="FOO, BAR"):
        encode_cells({"FOO": 1.0, "BAR": 2.0, "CD3E": 1.0}, VOCAB)
    with pytest.raises(ValueError, match="empty"):
        encode_cells("<cell> </cell>", VOCAB)
    with pytest.raises(TypeError, match="cannot read a cell from int"):
        encode_cells([3], VOCAB)
    with pytest.raises(ValueError, match="layer= only applies"):
        encode_cells("CD3E", VOCAB, layer="counts")
    with pytest.raises(ValueError, match="no cells"):
        encode_cells([], VOCAB)
