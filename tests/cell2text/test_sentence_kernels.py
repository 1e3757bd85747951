"""rank_sentence_bytes (ranking and sentence writing in one pass) against the reference rule."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cellrlhf.cell2text.encoding as encode_module
from cellrlhf.cell2text.encoding import GeneNameBytes, encode, string_column
from cellrlhf.cell2text.expression_checks import InvalidExpressionError
from cellrlhf.cell2text.ranking import cell_keys, gene_tie_keys
from cellrlhf.cell2text.sentence_kernels import rank_sentence_bytes


def fused_sentences(X, names, genes, seed=0, buffer=None):
    offsets, data, counts = rank_sentence_bytes(
        X,
        cell_keys(names),
        tie_keys=gene_tie_keys(genes),
        names=GeneNameBytes.from_genes(genes),
        seed=seed,
        buffer=buffer,
    )
    return string_column(offsets, data).to_pylist(), counts, data


@st.composite
def tied_rows(draw):
    n_cells = draw(st.integers(1, 10))
    n_genes = draw(st.integers(1, 40))
    distinct = draw(st.sampled_from([(1.0,), (1.0, 2.0), (0.5, 1.0, 3.0), None]))
    dense = np.zeros((n_cells, n_genes), dtype=np.float32)
    for i in range(n_cells):
        support = draw(st.lists(st.integers(0, n_genes - 1), max_size=n_genes, unique=True))
        for j in support:
            dense[i, j] = (
                draw(st.floats(0.0625, 64.0, width=32))
                if distinct is None
                else draw(st.sampled_from(distinct))
            )
    return sp.csr_matrix(dense)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(X=tied_rows(), seed=st.integers(0, 2**64 - 1), spare=st.integers(-5, 40))
def test_fused_sentences_equal_reference(reference, factories, X, seed, spare):
    # gene_symbols gives some names of 16+ bytes: the byte-loop path of the writer
    genes = factories.gene_symbols(X.shape[1], seed=X.shape[1] + 1)
    names = [f"cell{i}" for i in range(X.shape[0])]
    expected = reference.sentences(X, names, genes, seed)
    size = sum(len(s) for s in expected)
    buffer = np.full(max(size + spare, 0), 7, dtype=np.uint8)  # too small when spare < 0
    sentences, counts, data = fused_sentences(X, names, genes, seed, buffer)
    assert sentences == expected
    assert list(counts) == [len(s.split()) for s in expected]
    assert np.shares_memory(data, buffer) == (spare >= 0 and size > 0)


def test_fused_equals_reference_on_long_tied_rows_with_threads(reference, factories):
    # enough stored values for the parallel kernels, rows longer than a bucket table fill
    X = factories.counts_matrix(300, 800, density=0.6, max_count=3, seed=4)
    genes = factories.gene_symbols(800, seed=8)
    names = [f"c-{i}" for i in range(300)]
    expected = reference.sentences(X, names, genes, 3)
    before = numba.get_num_threads()
    try:
        for threads in {1, before}:
            numba.set_num_threads(threads)
            assert fused_sentences(X, names, genes, 3)[0] == expected
    finally:
        numba.set_num_threads(before)


def test_fused_rejects_invalid_values_and_wrong_shapes(factories):
    genes = factories.gene_symbols(3)
    X = sp.csr_matrix(np.array([[1.0, np.nan, 0.0], [0.0, 2.0, -1.0]], dtype=np.float32))
    with pytest.raises(InvalidExpressionError, match="counts"):
        rank_sentence_bytes(
            X,
            cell_keys(["a", "b"]),
            tie_keys=gene_tie_keys(genes),
            names=GeneNameBytes.from_genes(genes),
            layer_name="counts",
        )
    with pytest.raises(ValueError, match="columns"):
        rank_sentence_bytes(
            X,
            cell_keys(["a", "b"]),
            tie_keys=gene_tie_keys(genes[:2]),
            names=GeneNameBytes.from_genes(genes[:2]),
        )
    with pytest.raises(ValueError, match="cell keys"):
        rank_sentence_bytes(
            X,
            cell_keys(["a"]),
            tie_keys=gene_tie_keys(genes),
            names=GeneNameBytes.from_genes(genes),
        )


def test_gene_name_bytes_pad_short_names_with_one_space():
    genes = ["A", "CD3E", "X" * 15, "Y" * 16, "Zellé"]
    names = GeneNameBytes.from_genes(genes)
    words = names.words.view(np.uint8).reshape(len(genes), 16)
    for i, gene in enumerate(genes):
        raw = gene.encode()
        assert names.lengths[i] == len(raw)
        assert bytes(names.data[names.offsets[i] : names.offsets[i + 1]]) == raw
        if len(raw) < 16:
            assert bytes(words[i]) == raw + b" " + b"\0" * (15 - len(raw))
        else:
            assert not words[i].any()


def test_encode_reuses_its_buffer_across_string_blocks(monkeypatch, reference, factories):
    # small string blocks: the buffer is reused, grown, and blocks cross chunk boundaries
    monkeypatch.setattr(encode_module, "_STRING_ROWS", 3)
    adata = factories.make_adata(n_cells=23, n_genes=30, density=0.5, seed=2)
    expected = reference.sentences(adata.X, adata.obs_names, list(adata.var_names), 5)
    for chunk_size in (4, 7, 100):
        encode(adata, seed=5, chunk_size=chunk_size)
        assert list(adata.obs["cell_sentence"]) == expected


def test_permuted_name_bytes_equal_the_names_encoded_in_that_order(factories):
    genes = [*factories.gene_symbols(30, seed=3), "Zellé", "ß"]
    order = np.random.default_rng(0).permutation(len(genes))
    permuted = GeneNameBytes.from_genes(genes).permuted(order)
    direct = GeneNameBytes.from_genes([genes[i] for i in order])
    for name in ("data", "offsets", "lengths", "words"):
        np.testing.assert_array_equal(getattr(permuted, name), getattr(direct, name))


SPECIAL_BITS = [
    0x00000000,  # 0.0
    0x80000000,  # -0.0
    0x00000001,  # smallest subnormal
    0x3F800000,  # 1.0
    0x7F7FFFFF,  # largest finite
    0x7F800000,  # inf
    0xFF800000,  # -inf
    0x7FC00000,  # NaN
    0xFFC00000,  # negative NaN
    0x80000001,  # negative subnormal
    0xBF800000,  # -1.0
]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(SPECIAL_BITS), max_size=12), min_size=1, max_size=6))
def test_branch_free_scan_classifies_values_like_value_kind(rows):
    from cellrlhf.cell2text.ranking import VALUE_EXPRESSED, value_kind
    from cellrlhf.cell2text.sentence_kernels import _scan_sentence_rows

    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    vbits = np.array([b for r in rows for b in r], dtype=np.uint32)
    indices = np.array([j for r in rows for j in range(len(r))], dtype=np.int32)
    name_lengths = np.arange(1, 13, dtype=np.int32)
    expected_counts, expected_lengths, expected_flags = [], [], []
    for r in rows:
        kinds = [value_kind(b) for b in r]
        expressed = [j for j, k in enumerate(kinds) if k == VALUE_EXPRESSED]
        expected_counts.append(len(expressed))
        total = sum(int(name_lengths[j]) for j in expressed)
        expected_lengths.append(total + len(expressed) - 1 if expressed else 0)
        flags = 0
        for k in kinds:
            flags |= max(k, 0)
        expected_flags.append(flags)
    counts, lengths, flags = _scan_sentence_rows(indptr, vbits, indices, name_lengths)
    assert counts.tolist() == expected_counts
    assert lengths.tolist() == expected_lengths
    assert flags.tolist() == expected_flags
