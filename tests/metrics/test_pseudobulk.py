import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from cellrlhf.metrics.pseudobulk import (
    GroupAccumulator,
    GroupStats,
    group_codes,
    group_means,
    group_sums,
    pseudobulk,
)


def test_group_codes_sorted_strings():
    cats, codes = group_codes(["b", "a", "b", 3])
    assert cats.tolist() == ["3", "a", "b"]
    assert codes.tolist() == [2, 1, 2, 0]


@pytest.mark.parametrize("sparse", [False, True])
def test_group_means(sparse):
    X = np.array([[1.0, 0], [3, 2], [5, 5], [0, 1]])
    codes = np.array([0, 0, 2, 0])
    got = group_means(sp.csr_matrix(X) if sparse else X, codes, 3)
    np.testing.assert_allclose(got[0], [4 / 3, 1.0])
    assert np.all(np.isnan(got[1]))  # empty group
    np.testing.assert_allclose(got[2], [5.0, 5.0])


def test_pseudobulk_of_adata():
    X = np.array([[1.0, 1], [3, 1], [0, 4], [2, 2]])
    adata = ad.AnnData(
        X,
        obs=pd.DataFrame({"p": ["ctrl", "ctrl", "A", "B"]}, index=list("wxyz")),
        var=pd.DataFrame(index=["g1", "g2"]),
    )
    bulks = pseudobulk(adata, pert_col="p", control="ctrl")
    assert bulks.perturbations.tolist() == ["A", "B"]
    np.testing.assert_allclose(bulks.control, [2.0, 1.0])
    np.testing.assert_allclose(bulks.deltas, [[-2.0, 3.0], [0.0, 1.0]])
    assert bulks.n_cells.tolist() == [1, 1] and bulks.n_control == 2
    np.testing.assert_allclose(bulks.values, [[0.0, 4.0], [2.0, 2.0]])
    with pytest.raises(ValueError, match="control label"):
        pseudobulk(adata, pert_col="p", control="control")
    with pytest.raises(KeyError, match="pert_col"):
        pseudobulk(adata, pert_col="condition", control="ctrl")


@pytest.mark.parametrize("sparse", [False, True])
def test_group_sums_and_moments_hand_computed(sparse):
    # rows [1, 0], [3, 2], [5, 5], [0, 1]; groups 0, 0, 1, -1 (the last row in no group)
    X = np.array([[1.0, 0], [3, 2], [5, 5], [0, 1]], dtype=np.float32)
    codes = np.array([0, 0, 1, -1])
    groups, counts, total, total_sq = group_sums(
        sp.csr_matrix(X) if sparse else X, codes, squares=True
    )
    assert groups.tolist() == [0, 1] and counts.tolist() == [2, 1]
    np.testing.assert_array_equal(total, [[4.0, 2.0], [5.0, 5.0]])
    np.testing.assert_array_equal(total_sq, [[10.0, 4.0], [25.0, 25.0]])
    assert total.dtype == np.float64
    stats = GroupStats.from_sums(2, total[0], total_sq[0])
    # mean [2, 1]; unbiased variance ((1-2)^2 + (3-2)^2) / 1 = 2, ((0-1)^2 + (2-1)^2) / 1 = 2
    np.testing.assert_array_equal(stats.mean, [2.0, 1.0])
    np.testing.assert_array_equal(stats.var, [2.0, 2.0])
    one = GroupStats.from_matrix(X[2:3])
    assert one.n == 1 and one.var.tolist() == [0.0, 0.0]
    # only groups present get a row: codes 0 and 5 give two rows
    groups, counts, total, _ = group_sums(X, np.array([5, 0, 5, -1]))
    assert groups.tolist() == [0, 5] and counts.tolist() == [1, 2]
    np.testing.assert_array_equal(total, [[3.0, 2.0], [6.0, 5.0]])
    with pytest.raises(ValueError, match="out of range"):
        group_means(X, np.array([0, 0, 2, 0]), 2)
    with pytest.raises(ValueError, match="one per row"):
        group_sums(X, np.array([0, 0]))
    with pytest.raises(ValueError, match="-1 for no group"):
        group_sums(X, np.array([0, -2, 0, 0]))


def test_group_stats_from_dense_and_sparse_agree_with_numpy():
    rng = np.random.default_rng(1)
    x = rng.poisson(1.0, size=(40, 30)).astype(float)
    dense = GroupStats.from_matrix(x)
    sparse = GroupStats.from_matrix(sp.csr_matrix(x))
    np.testing.assert_allclose(dense.mean, sparse.mean)
    np.testing.assert_allclose(dense.var, sparse.var)
    np.testing.assert_allclose(dense.var, x.var(axis=0, ddof=1))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.integers(1, 49), max_size=5),
)
def test_streamed_group_sums_equal_full_computation(seed, cuts):
    rng = np.random.default_rng(seed)
    X = sp.random(50, 8, density=0.4, random_state=seed, format="csr", dtype=np.float64)
    groups = rng.integers(-1, 3, size=50)
    acc = GroupAccumulator(3, 8)
    bounds = [0, *sorted(set(cuts)), 50]
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        acc.add(X[start:stop], groups[start:stop])
    dense = X.toarray()
    for g in range(3):
        rows = dense[groups == g]
        assert acc.n[g] == len(rows)
        np.testing.assert_allclose(acc.mean(g), rows.mean(axis=0) if len(rows) else 0.0)
        if len(rows) > 1:
            np.testing.assert_allclose(acc.stats(g).var, rows.var(axis=0, ddof=1), atol=1e-12)
    with pytest.raises(ValueError, match="group labels"):
        acc.add(X[:3], groups[:2])
    with pytest.raises(ValueError, match="out of range"):
        acc.add(X[:1], np.array([3]))
