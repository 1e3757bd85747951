"""rank_expressed against the slow reference rule; hashing; invariances; invalid values."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellrlhf.cell2text.expression_checks import InvalidExpressionError
from cellrlhf.cell2text.ranking import (
    RankedCells,
    cell_keys,
    gene_tie_keys,
    rank_expressed,
    seed_key,
    string_keys,
)
from cellrlhf.cell2text.vocab import GeneVocab


def ranked_columns(ranked: RankedCells) -> list[list[int]]:
    return [list(ranked.row(i)[0]) for i in range(ranked.n_cells)]


def reference_columns(reference, X, names, genes, seed=0, top_k=None) -> list[list[int]]:
    dense = X.toarray()
    return [reference.rank_row(dense[i], names[i], genes, seed, top_k) for i in range(X.shape[0])]


# --------------------------------------------------------------------------- hashing
@pytest.mark.parametrize("text", ["", "a", "CD3E", "cell-0001", "Zellé-ß-細胞", "x" * 300])
def test_string_keys_are_fnv1a_then_splitmix(reference, text):
    assert int(string_keys([text])[0]) == reference.string_key(text)
    assert int(cell_keys([text])[0]) == reference.string_key(text)


def test_string_key_and_tie_known_values(reference):
    # pinned: the rule decides every tie in every saved dataset, so it must never drift
    assert int(string_keys([""])[0]) == 0xF52A15E9A9B5E89B
    assert int(string_keys(["CD3E"])[0]) == 0x6A537023E1AAC7C9
    assert reference.tie("cell-1", "cd3e", 0) == 0x7A887461
    assert string_keys([]).dtype == np.uint64 and len(string_keys([])) == 0


def test_seed_key_matches_reference_and_validates(reference):
    for seed in (0, 1, 42, 2**63, 2**64 - 1):
        assert int(seed_key(seed)) == reference.fmix64(seed + 0x9E3779B97F4A7C15)
    with pytest.raises(ValueError, match="seed"):
        seed_key(-1)
    with pytest.raises(TypeError, match="seed"):
        seed_key(1.5)


def test_gene_tie_keys_use_upper_case_symbols_and_symbol_order(reference):
    keys = gene_tie_keys(["cd3e", "B2M", "Actb"])
    assert [int(k) for k in keys.keys] == [reference.string_key(g) for g in ("CD3E", "B2M", "ACTB")]
    assert list(keys.by_order) == [2, 1, 0]  # ACTB < B2M < CD3E
    assert list(keys.order[keys.by_order]) == [0, 1, 2]
    with pytest.raises(ValueError, match="unique"):
        gene_tie_keys(["CD3E", "cd3e"])


# --------------------------------------------------------------------------- exact rankings
@st.composite
def tied_matrices(draw):
    n_cells = draw(st.integers(1, 12))
    n_genes = draw(st.integers(1, 50))
    distinct = draw(st.sampled_from([(1.0,), (1.0, 2.0), (0.5, 1.0, 3.0, 7.25), None]))
    cells = []
    for _ in range(n_cells):
        row = np.zeros(n_genes, dtype=np.float32)
        support = draw(st.lists(st.integers(0, n_genes - 1), max_size=n_genes, unique=True))
        for j in support:
            if distinct is None:  # many distinct values: the argsort branch of the kernel
                row[j] = draw(st.floats(0.0625, 1024.0, width=32))
            else:
                row[j] = draw(st.sampled_from(distinct))
        cells.append(row)
    return sp.csr_matrix(np.vstack(cells))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    X=tied_matrices(),
    seed=st.integers(0, 2**64 - 1),
    top_k=st.one_of(st.none(), st.integers(1, 60)),
)
def test_rank_expressed_equals_reference(reference, factories, X, seed, top_k):
    genes = factories.gene_symbols(X.shape[1], seed=X.shape[1])
    names = [f"c{i}" for i in range(X.shape[0])]
    ranked = rank_expressed(X, cell_keys(names), genes=genes, seed=seed, top_k=top_k)
    expected = reference_columns(reference, X, names, genes, seed, top_k)
    assert ranked_columns(ranked) == expected
    dense = X.toarray()
    for i, cols in enumerate(expected):
        np.testing.assert_array_equal(ranked.row(i)[1], dense[i, cols])
    assert ranked.indptr.dtype == np.int64
    assert ranked.genes.dtype == np.int32
    assert ranked.values.dtype == np.float32


def test_many_distinct_values_and_long_rows(reference, factories):
    # rows longer than the kernel's small-sort threshold, with and without ties
    rng = np.random.default_rng(3)
    n_genes = 3000
    genes = factories.gene_symbols(n_genes, seed=5)
    dense = np.zeros((4, n_genes), dtype=np.float32)
    dense[0] = rng.random(n_genes).astype(np.float32) + 0.1  # all distinct
    dense[1, rng.random(n_genes) < 0.7] = 1.0  # one huge tie group
    dense[2] = rng.integers(0, 40, n_genes)  # 39 distinct values
    dense[3, :5] = [3, 3, 2, 2, 1]
    X = sp.csr_matrix(dense)
    names = ["a", "b", "c", "d"]
    ranked = rank_expressed(X, cell_keys(names), genes=genes, seed=9)
    assert ranked_columns(ranked) == reference_columns(reference, X, names, genes, 9)


def test_values_are_compared_as_float32_and_stored_zeros_skipped(reference):
    genes = ["A", "B", "C", "D"]
    X = sp.csr_matrix(np.array([[1.0 + 1e-12, 1.0, 0.0, 2.0]], dtype=np.float64))
    X.data = np.append(X.data, 0.0)  # an explicit stored zero
    X.indices = np.append(X.indices, 2).astype(np.int32)
    X.indptr = np.array([0, 4])
    ranked = rank_expressed(X, cell_keys(["cell"]), genes=genes)
    cols = list(ranked.row(0)[0])
    assert cols[0] == 3 and sorted(cols[1:]) == [0, 1]  # A and B tie in float32; C is absent
    assert cols == reference.rank_row([1.0, 1.0, 0.0, 2.0], "cell", genes)


def test_integer_input_is_ranked_like_float(reference):
    genes = ["A", "B", "C"]
    X = sp.csr_matrix(np.array([[5, 0, 7], [1, 1, 1]], dtype=np.int64))
    ranked = rank_expressed(X, cell_keys(["x", "y"]), genes=genes)
    assert ranked_columns(ranked) == reference_columns(reference, X, ["x", "y"], genes)


def test_hash_collision_is_broken_by_symbol_order(reference):
    # find two genes whose 32-bit tie hashes collide for one cell, and tie their values
    cell, seed = "collision-cell", 0
    names = np.array([f"G{i}" for i in range(200_000)])
    cell_mix = reference.fmix64(reference.string_key(cell) ^ int(seed_key(seed)))
    with np.errstate(over="ignore"):
        z = np.uint64(cell_mix) ^ string_keys(names)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        ties = (z ^ (z >> np.uint64(31))) >> np.uint64(32)
    order = np.argsort(ties, kind="stable")
    same = np.flatnonzero(ties[order][1:] == ties[order][:-1])
    assert len(same), "no collision found among 200k names (expected about 4.7)"
    first, second = names[order[same[0]]], names[order[same[0] + 1]]
    assert reference.tie(cell, first, seed) == reference.tie(cell, second, seed)
    low, high = sorted([first, second])
    genes = [high, "FILLER", low]  # the column order puts the higher symbol first
    X = sp.csr_matrix(np.array([[2.0, 0.0, 2.0]], dtype=np.float32))
    ranked = rank_expressed(X, cell_keys([cell]), genes=genes, seed=seed)
    assert [genes[j] for j in ranked.row(0)[0]] == [low, high]


# --------------------------------------------------------------------------- invariances
def sentences(ranked: RankedCells, genes) -> list[tuple[str, ...]]:
    return [tuple(genes[j] for j in ranked.row(i)[0]) for i in range(ranked.n_cells)]


def test_ties_are_deterministic_and_seeded(factories):
    X = factories.counts_matrix(30, 80, density=0.6, max_count=2, seed=1)
    genes = factories.gene_symbols(80, seed=1)
    keys = cell_keys([f"c{i}" for i in range(30)])
    first = sentences(rank_expressed(X, keys, genes=genes, seed=5), genes)
    again = sentences(rank_expressed(X.copy(), keys.copy(), genes=list(genes), seed=5), genes)
    other = sentences(rank_expressed(X, keys, genes=genes, seed=6), genes)
    assert first == again
    assert sum(a != b for a, b in zip(first, other, strict=True)) >= 25
    # the seed only reorders ties: the multiset of values along each sentence is unchanged
    for a, b in zip(first, other, strict=True):
        assert sorted(a) == sorted(b)


def test_row_order_and_chunking_do_not_matter(factories):
    X = factories.counts_matrix(50, 60, seed=2)
    genes = factories.gene_symbols(60, seed=2)
    names = [f"cell{i}" for i in range(50)]
    whole = sentences(rank_expressed(X, cell_keys(names), genes=genes, seed=1), genes)
    perm = np.random.default_rng(0).permutation(50)
    shuffled = sentences(
        rank_expressed(X[perm], cell_keys([names[i] for i in perm]), genes=genes, seed=1), genes
    )
    assert [shuffled[list(perm).index(i)] for i in range(50)] == whole
    chunked = []
    for start in range(0, 50, 7):
        block = X[start : start + 7]
        chunked += sentences(
            rank_expressed(block, cell_keys(names[start : start + 7]), genes=genes, seed=1), genes
        )
    assert chunked == whole


def test_column_order_does_not_matter(factories):
    X = factories.counts_matrix(40, 70, seed=3)
    genes = factories.gene_symbols(70, seed=3)
    keys = cell_keys([f"cell{i}" for i in range(40)])
    perm = np.random.default_rng(1).permutation(70)
    a = sentences(rank_expressed(X, keys, genes=genes), genes)
    permuted_genes = [genes[j] for j in perm]
    b = sentences(rank_expressed(X[:, perm], keys, genes=permuted_genes), permuted_genes)
    assert a == b


def test_thread_count_does_not_matter(factories):
    X = factories.counts_matrix(300, 50, seed=4)
    genes = factories.gene_symbols(50, seed=4)
    keys = cell_keys([f"c{i}" for i in range(300)])
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = rank_expressed(X, keys, genes=genes)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = rank_expressed(X, keys, genes=genes)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one.genes, many.genes)
    np.testing.assert_array_equal(one.indptr, many.indptr)


def test_same_values_different_cells_get_different_tie_orders(factories):
    row = np.ones((1, 40), dtype=np.float32)
    X = sp.csr_matrix(np.repeat(row, 2, axis=0))
    genes = factories.gene_symbols(40)
    ranked = rank_expressed(X, cell_keys(["one", "two"]), genes=genes)
    assert list(ranked.row(0)[0]) != list(ranked.row(1)[0])


def test_gene_vocab_and_precomputed_keys_are_accepted(factories):
    X = factories.counts_matrix(5, 10, seed=6)
    genes = factories.gene_symbols(10, seed=6)
    keys = cell_keys([f"c{i}" for i in range(5)])
    from_list = rank_expressed(X, keys, genes=genes)
    from_vocab = rank_expressed(X, keys, genes=GeneVocab(tuple(genes)))
    from_keys = rank_expressed(X, keys, genes=gene_tie_keys(genes))
    np.testing.assert_array_equal(from_list.genes, from_vocab.genes)
    np.testing.assert_array_equal(from_list.genes, from_keys.genes)


# --------------------------------------------------------------------------- edges and errors
def test_empty_rows_top_k_and_empty_matrix():
    X = sp.csr_matrix(np.array([[0, 0, 0], [3, 2, 1]], dtype=np.float32))
    ranked = rank_expressed(X, cell_keys(["e", "f"]), genes=["A", "B", "C"], top_k=2)
    assert list(ranked.indptr) == [0, 0, 2]
    assert list(ranked.genes) == [0, 1]
    empty = rank_expressed(sp.csr_matrix((0, 3), dtype=np.float32), cell_keys([]), genes="ABC")
    assert empty.n_cells == 0 and len(empty.genes) == 0


@pytest.mark.parametrize(
    ("bad", "kind"),
    [(np.nan, "NaN"), (np.inf, "infinite"), (-1.0, "negative"), (-np.inf, "infinite")],
)
def test_invalid_values_raise_counting_cells_and_naming_layer(bad, kind):
    dense = np.ones((5, 3), dtype=np.float32)
    dense[1, 0] = bad
    dense[3, 2] = bad
    with pytest.raises(InvalidExpressionError, match=rf"layers\['counts'\]: 2 of 5 cells.*{kind}"):
        rank_expressed(sp.csr_matrix(dense), cell_keys("abcde"), genes="XYZ", layer_name="counts")


def test_argument_errors():
    X = sp.csr_matrix(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="columns"):
        rank_expressed(X, cell_keys("ab"), genes="XY")
    with pytest.raises(ValueError, match="cell keys"):
        rank_expressed(X, cell_keys("a"), genes="XYZ")
    with pytest.raises(ValueError, match="top_k"):
        rank_expressed(X, cell_keys("ab"), genes="XYZ", top_k=0)
    with pytest.raises(TypeError, match="CSR"):
        rank_expressed(X.tocsc(), cell_keys("ab"), genes="XYZ")
