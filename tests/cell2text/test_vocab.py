import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from cellrlhf.cell2text.gene_names import GeneNameError, looks_like_ensembl
from cellrlhf.cell2text.vocab import GeneVocab, gene_mapping


def _adata(names, X=None, var=None):
    X = np.arange(2 * len(names), dtype=np.float32).reshape(2, len(names)) if X is None else X
    var = pd.DataFrame(index=pd.Index(names).astype(str)) if var is None else var
    return ad.AnnData(X, var=var)


def test_lookup_is_case_insensitive_and_keeps_spelling():
    vocab = GeneVocab(("CD3E", "Ms4a1"))
    assert vocab.index("cd3e") == 0
    assert vocab.canonical("MS4A1") == "Ms4a1"
    assert "ms4a1" in vocab and "CD8A" not in vocab
    assert vocab.indices(["ms4a1", "nope", "CD3E"]).tolist() == [1, -1, 0]
    with pytest.raises(KeyError, match="CD8A"):
        vocab.index("CD8A")


@pytest.mark.parametrize(
    ("names", "match"),
    [
        (["CD3E", "CD3E"], "repeat or collide"),
        (["CD3E", "cd3e"], "CD3E / cd3e"),
        (["CD3E", ""], "empty or NaN"),
        (["CD3E", "HLA DRA"], "whitespace"),
    ],
)
def test_bad_gene_lists_raise(names, match):
    with pytest.raises(GeneNameError, match=match):
        GeneVocab(tuple(names))


def test_case_collision_error_lists_genes_and_suggests_policies():
    adata = _adata(["CD3E", "cd3e", "MS4A1", "Ms4a1", "ACTB"])
    with pytest.raises(GeneNameError) as err:
        GeneVocab.from_adata(adata)
    message = str(err.value)
    assert "CD3E / cd3e" in message and "MS4A1 / Ms4a1" in message
    assert "duplicates='sum'" in message and "duplicates='first'" in message


def test_duplicate_policies_sum_and_first():
    X = np.array([[1, 2, 3], [4, 0, 6]], dtype=np.float32)
    adata = _adata(["CD3E", "MS4A1", "cd3e"], X=X)
    vocab, mapping = gene_mapping(adata, duplicates="sum")
    assert vocab.genes == ("CD3E", "MS4A1")
    np.testing.assert_array_equal(mapping.apply(X), [[4, 2], [10, 0]])
    np.testing.assert_array_equal(mapping.apply(sp.csr_matrix(X)).toarray(), [[4, 2], [10, 0]])
    vocab, mapping = gene_mapping(adata, duplicates="first")
    np.testing.assert_array_equal(mapping.apply(X), [[1, 2], [4, 0]])
    with pytest.raises(ValueError, match="duplicates="):
        gene_mapping(adata, duplicates="mean")


def test_identity_mapping_returns_input_unchanged():
    X = np.ones((2, 2), dtype=np.float32)
    _, mapping = gene_mapping(_adata(["A1", "B2"], X=X))
    assert mapping.is_identity
    assert mapping.apply(X) is X


def test_ensembl_ids_without_symbols_point_to_gene_symbols():
    names = ["ENSG00000141510", "ENSG00000012048", "ENSG00000139618"]
    adata = _adata(names)
    with pytest.raises(GeneNameError, match="gene_symbols="):
        GeneVocab.from_adata(adata)
    adata.var["gene_symbol"] = ["TP53", "BRCA1", "BRCA2"]
    assert GeneVocab.from_adata(adata, gene_symbols="gene_symbol").genes == (
        "TP53",
        "BRCA1",
        "BRCA2",
    )
    assert looks_like_ensembl(names + ["TP53"]) == 0.75


def test_missing_or_nan_symbol_column():
    adata = _adata(["ENSG00000141510", "ENSG00000012048"])
    with pytest.raises(KeyError, match="available columns"):
        GeneVocab.from_adata(adata, gene_symbols="symbol")
    adata.var["symbol"] = ["TP53", np.nan]
    with pytest.raises(GeneNameError, match="1 gene name"):
        GeneVocab.from_adata(adata, gene_symbols="symbol")


def test_save_load_round_trip(tmp_path):
    vocab = GeneVocab(("CD3E", "Ms4a1", "ACTB"), params={"source": "test"})
    path = vocab.save(tmp_path / "model")
    assert path.name == "gene_vocab.json"
    loaded = GeneVocab.load(tmp_path / "model")
    assert loaded == vocab and loaded.params == {"source": "test"}
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a cellrlhf gene vocabulary"):
        GeneVocab.load(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="gene_vocab.json"):
        GeneVocab.load(tmp_path / "missing")


@given(
    st.lists(
        st.text(alphabet="ABCDEFGHIJKLMNOPabcdefgh0123456789-.", min_size=1, max_size=8).filter(
            lambda s: s.lower() not in {"nan", "none"}  # pandas' strings for missing names
        ),
        min_size=1,
        max_size=40,
    )
)
def test_mapping_partitions_columns(names):
    """Every column lands on the gene of its upper-cased name; genes are unique up to case."""
    vocab, mapping = GeneVocab.from_names_with_mapping(names, "var['x']", duplicates="sum")
    assert len({g.upper() for g in vocab.genes}) == len(vocab)
    for col, name in enumerate(names):
        assert vocab.genes[mapping.column_to_gene[col]].upper() == name.strip().upper()


@pytest.mark.parametrize(
    "names",
    [
        ["CD3E", "MS4A1"],
        np.array(["CD3E", "MS4A1"]).tolist(),  # str
        list(np.array(["CD3E", "MS4A1"])),  # numpy.str_
        [" CD3E", "MS4A1\t"],  # stripped
        ["CD3E", "NaN"],
        ["CD3E", "none"],
        ["CD3E", None],
        ["CD3E", float("nan")],
        ["CD3E", 7],
        ["CD3E", "HLA\u00a0DRA"],  # non-breaking space inside
        ["CD3E", "\u2003"],  # only whitespace
        ["Zellé", "ß-細胞"],
        [],
    ],
)
def test_fast_name_cleaning_matches_clean_gene_names(names):
    # _clean_names skips clean_gene_names for already clean lists; both must agree exactly
    from cellrlhf.cell2text.gene_names import clean_gene_names
    from cellrlhf.cell2text.vocab import _clean_names

    try:
        expected = clean_gene_names(list(names), source="s")
    except GeneNameError as err:
        with pytest.raises(GeneNameError) as caught:
            _clean_names(names, source="s")
        assert str(caught.value) == str(err)
    else:
        got = _clean_names(names, source="s")
        assert got == expected
        assert all(type(name) is str for name in got)


def test_vocab_from_names_is_built_once_and_equals_direct_construction():
    names = ["CD3E", "ms4a1", "Gnly"]
    vocab, mapping = GeneVocab.from_names_with_mapping(names)
    direct = GeneVocab(tuple(names))
    assert vocab == direct and vocab.genes == direct.genes
    assert vocab.params == {"source": "var_names", "duplicates": "error"}
    assert [vocab.index(g) for g in ("cd3e", "MS4A1", "GNLY")] == [0, 1, 2]
    assert mapping.is_identity
