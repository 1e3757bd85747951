import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from cellrlhf.data.de import (
    DEResult,
    GroupStats,
    benjamini_hochberg,
    differential_expression,
    top_de_genes,
    welch_t_test,
    wilcoxon_rank_sum,
)
from cellrlhf.data.pseudobulk import GroupAccumulator


def _groups(seed=0, n1=40, n0=60, genes=30):
    rng = np.random.default_rng(seed)
    x = rng.poisson(1.0, size=(n1, genes)).astype(float)
    x[:, :5] += 3  # five genes go up
    y = rng.poisson(1.0, size=(n0, genes)).astype(float)
    return x, y


def test_welch_matches_scipy():
    x, y = _groups()
    _, p = welch_t_test(GroupStats.from_matrix(x), GroupStats.from_matrix(y))
    expected = stats.ttest_ind(x, y, equal_var=False).pvalue
    np.testing.assert_allclose(p, expected, rtol=1e-10)


def test_welch_from_sparse_matches_dense():
    x, y = _groups(1)
    dense = GroupStats.from_matrix(x)
    sparse = GroupStats.from_matrix(sp.csr_matrix(x))
    np.testing.assert_allclose(dense.mean, sparse.mean)
    np.testing.assert_allclose(dense.var, sparse.var)
    np.testing.assert_allclose(dense.var, x.var(axis=0, ddof=1))


def test_wilcoxon_matches_scipy_and_handles_constant_genes():
    x, y = _groups(2)
    x[:, 7] = 0
    y[:, 7] = 0
    _, p = wilcoxon_rank_sum(sp.csr_matrix(x), y)
    expected = stats.mannwhitneyu(x, y, axis=0, method="asymptotic").pvalue
    keep = np.arange(x.shape[1]) != 7
    np.testing.assert_allclose(p[keep], expected[keep], rtol=1e-10)
    assert p[7] == 1.0


def test_degenerate_groups():
    one = GroupStats.from_matrix(np.ones((1, 3)))
    many = GroupStats.from_matrix(np.zeros((5, 3)))
    _, p = welch_t_test(one, many)
    assert np.all(p == 1.0)
    same = GroupStats.from_matrix(np.ones((4, 2)))
    _, p = welch_t_test(same, same)
    assert np.all(p == 1.0)


def test_benjamini_hochberg_known_values():
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.5), "BH") = 0.04 0.0533 0.0533 0.5
    q = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5]))
    np.testing.assert_allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.5])


def test_top_genes_order_threshold_and_ties():
    genes = ["A", "B", "C", "D", "E", "F"]
    result = DEResult(
        effect=np.array([2.0, 1.0, -3.0, 2.0, 0.1, -0.5]),
        pvalue=np.zeros(6),
        padj=np.array([0.001, 0.01, 0.001, 0.001, 0.001, 0.2]),
        method="welch",
        n_perturbed=10,
        n_control=10,
    )
    up, down = top_de_genes(result, genes, n_top=3, alpha=0.05, min_abs_effect=0.5)
    assert up == ["A", "D", "B"]  # A before D: tie kept in vocabulary order
    assert down == ["C"]  # F not significant, E below the effect threshold


def test_differential_expression_finds_the_planted_genes():
    x, y = _groups(3)
    for method in ("welch", "wilcoxon"):
        result = differential_expression(
            GroupStats.from_matrix(x),
            GroupStats.from_matrix(y),
            method=method,
            perturbed_matrix=x,
            control_matrix=y,
        )
        up, down = top_de_genes(result, [f"G{i}" for i in range(30)], n_top=10)
        assert set(up) == {f"G{i}" for i in range(5)}, method
        assert down == []
    with pytest.raises(ValueError, match="matrices"):
        differential_expression(
            GroupStats.from_matrix(x), GroupStats.from_matrix(y), method="wilcoxon"
        )


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
