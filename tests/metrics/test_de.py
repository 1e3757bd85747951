import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from cellrlhf.metrics.de import DEResult, differential_expression, top_de_genes
from cellrlhf.metrics.pseudobulk import GroupStats


def _groups(seed=0, n1=40, n0=60, genes=30):
    rng = np.random.default_rng(seed)
    x = rng.poisson(1.0, size=(n1, genes)).astype(float)
    x[:, :5] += 3  # five genes go up
    y = rng.poisson(1.0, size=(n0, genes)).astype(float)
    return x, y


# fixed inputs of the agreement tests below (7 perturbed, 9 control cells, 5 genes)
X_PERT = np.array(
    [
        [0.0, 1.0, 0.6, 0.0, 2.2],
        [0.0, 0.0, 0.0, 0.6, 2.3],
        [0.5, 0.0, 0.9, 1.1, 3.9],
        [0.2, 3.1, 0.7, 0.0, 2.9],
        [0.0, 0.1, 1.2, 0.8, 4.2],
        [0.5, 0.5, 1.2, 0.5, 2.0],
        [0.0, 1.0, 0.6, 1.4, 2.0],
    ]
)
X_CTRL = np.array(
    [
        [0.0, 0.0, 2.1, 0.0, 0.0],
        [0.0, 0.7, 0.0, 1.8, 0.5],
        [1.0, 0.1, 0.7, 0.4, 0.2],
        [0.8, 0.4, 1.0, 0.1, 1.3],
        [0.7, 0.0, 0.1, 0.0, 0.2],
        [0.5, 0.2, 0.3, 0.4, 0.0],
        [0.0, 0.0, 0.3, 3.0, 1.3],
        [0.9, 3.8, 0.0, 0.0, 0.0],
        [0.0, 0.4, 0.0, 0.0, 0.3],
    ]
)


def test_wilcoxon_agrees_with_the_previous_implementations():
    # expected values from the hand-written Mann-Whitney of cellrlhf/reward/de.py (c22fa08),
    # which the data stage's scipy call matched to 1e-15 on random data
    de = differential_expression(X_PERT, sp.csr_matrix(X_CTRL), method="wilcoxon")
    np.testing.assert_array_equal(de.statistic, [21.0, 37.5, 43.0, 39.0, 63.0])
    np.testing.assert_allclose(
        de.pvalue,
        [0.2566013115539155, 0.5536601105115841, 0.23938000443416763, 0.44642595729257584,
         0.00097234394055906],
        rtol=1e-12,
    )  # fmt: skip
    np.testing.assert_allclose(
        de.padj,
        [0.4276688525898592, 0.5536601105115841, 0.4276688525898592, 0.5536601105115841,
         0.0048617197027953],
        rtol=1e-12,
    )  # fmt: skip
    np.testing.assert_array_equal(
        de.log2_fold_change,
        np.array([-1.536298, 0.5430914, 0.76436514, -0.0146821495, 4.8557367], np.float32),
    )
    assert de.ranked_significant().tolist() == [4]


def test_welch_agrees_with_the_previous_implementation():
    # expected values from the hand-written Welch test and BH of cellrlhf/data/de.py (c22fa08)
    de = differential_expression(
        GroupStats.from_matrix(X_PERT), GroupStats.from_matrix(X_CTRL), method="welch"
    )
    np.testing.assert_allclose(
        de.pvalue,
        [1.4708372947440412e-01, 7.4550988040608823e-01, 4.0001891326019151e-01,
         9.9080305180463901e-01, 1.8518667777549548e-04],
        rtol=1e-12,
    )  # fmt: skip
    np.testing.assert_allclose(
        de.padj,
        [3.677093236860103e-01, 9.318873505076103e-01, 6.666981887669858e-01,
         9.908030518046390e-01, 9.259333888774774e-04],
        rtol=1e-12,
    )  # fmt: skip
    np.testing.assert_allclose(
        de.effect,
        [-0.2619047619047619, 0.19206349206349194, 0.24285714285714288, -0.00476190476190463,
         2.3634920634920635],
        rtol=1e-12,
    )  # fmt: skip


def test_wilcoxon_equals_a_direct_scipy_call():
    # perturbed [3, 4, 5] vs control [0, 1, 2]: U = 9, z = (9 - 4.5 - 0.5) / sqrt(5.25)
    de = differential_expression(np.array([[3.0], [4], [5]]), np.array([[0.0], [1], [2]]))
    assert de.statistic[0] == 9.0
    assert de.pvalue[0] == pytest.approx(2 * stats.norm.sf(4 / np.sqrt(5.25)), rel=1e-12)
    assert de.pvalue[0] == pytest.approx(0.0808556, abs=1e-7)
    assert de.effect[0] == 3.0 and de.method == "wilcoxon"
    assert (de.n_perturbed, de.n_control) == (3, 3)

    x, y = _groups(2)
    x[:10, 4] = 0.0
    de = differential_expression(sp.csr_matrix(x), y, method="wilcoxon")
    ref = stats.mannwhitneyu(
        x, y, axis=0, alternative="two-sided", method="asymptotic", use_continuity=True
    )
    np.testing.assert_array_equal(de.statistic, ref.statistic)
    np.testing.assert_allclose(de.pvalue, ref.pvalue, rtol=1e-12)


def test_welch_equals_a_direct_scipy_call():
    x, y = _groups()
    de = differential_expression(x, sp.csr_matrix(y), method="welch")
    ref = stats.ttest_ind(x, y, equal_var=False)
    np.testing.assert_allclose(de.statistic, ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(de.pvalue, ref.pvalue, rtol=1e-10)


def test_benjamini_hochberg_hand_computed():
    # p (gene order) = p1..p5, ranked p5 < p3 < p1 < p4 < p2; BH multiplies the p of rank i
    # by 5 / i and takes the running minimum from the largest down:
    #   rank 5 (p2): p2;  rank 4 (p4): min(p4 * 5/4 = 0.558, p2) = p2;
    #   rank 3 (p1): p1 * 5/3 = 0.428;  rank 2 (p3): min(p3 * 5/2 = 0.598, 0.428) = p1 * 5/3;
    #   rank 1 (p5): p5 * 5
    de = differential_expression(X_PERT, X_CTRL)
    p1, p2, _, _, p5 = de.pvalue
    np.testing.assert_allclose(de.padj, [p1 * 5 / 3, p2, p1 * 5 / 3, p2, p5 * 5], rtol=1e-14)


def test_genes_without_evidence():
    x, y = _groups(2)
    x[:, 7] = y[:, 7] = 0.0  # no spread at all
    for method in ("welch", "wilcoxon"):
        assert differential_expression(x, y, method=method).pvalue[7] == 1.0
    # constant in each group but different: Welch's t is infinite, the rank test is not
    de = differential_expression(np.ones((3, 1)), np.zeros((4, 1)), method="welch")
    assert de.pvalue[0] == 0.0
    de = differential_expression(np.ones((3, 1)), np.zeros((4, 1)), method="wilcoxon")
    assert de.pvalue[0] == pytest.approx(0.0247446720, abs=1e-9)


def test_degenerate_groups():
    one = GroupStats.from_matrix(np.ones((1, 3)))
    many = GroupStats.from_matrix(np.zeros((5, 3)))
    de = differential_expression(one, many, method="welch")
    assert np.all(de.pvalue == 1.0) and np.all(de.statistic == 0.0)
    same = GroupStats.from_matrix(np.ones((4, 2)))
    assert np.all(differential_expression(same, same, method="welch").pvalue == 1.0)
    with pytest.raises(ValueError, match="control group has no cells"):
        differential_expression(np.ones((3, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="perturbed group has no cells"):
        differential_expression(GroupStats.from_sums(0, np.zeros(2), np.zeros(2)), many)
    with pytest.raises(ValueError, match="gene counts differ"):
        differential_expression(np.ones((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="choose one of"):
        differential_expression(np.ones((3, 2)), np.zeros((3, 2)), method="t-test")


def test_fold_change_in_count_space():
    group = np.full((4, 3), np.log1p(3.0))
    group[:, 1] = 0.0
    group[:, 2] = np.log1p(1.0)
    control = np.full((5, 3), np.log1p(1.0))
    control[:, 1] = 0.0
    control[:, 2] = 0.0
    de = differential_expression(group, control)
    assert de.log2_fold_change.dtype == np.float32
    assert de.log2_fold_change[0] == pytest.approx(np.log2(3.0), rel=1e-6)
    assert de.log2_fold_change[1] == 0.0  # 0 / 0 is no change
    assert np.isposinf(de.log2_fold_change[2])
    assert de.pvalue[1] == 1.0
    np.testing.assert_allclose(de.effect, [np.log1p(3.0) - np.log1p(1.0), 0.0, np.log1p(1.0)])
    # counts instead of log1p: geometric means of the counts (3 vs 1), then a pseudo-count
    counts = differential_expression(
        np.full((2, 1), 3.0), np.ones((2, 1)), is_log1p=False, epsilon=1.0
    )
    assert counts.log2_fold_change[0] == pytest.approx(np.log2(4.0 / 2.0), rel=1e-6)
    with pytest.raises(ValueError, match="is_log1p=False"):
        differential_expression(
            GroupStats.from_matrix(group), GroupStats.from_matrix(control), method="welch",
            is_log1p=False,
        )  # fmt: skip


def test_rank_test_on_a_sample_with_moments_of_all_cells():
    x, y = _groups(3)
    result = differential_expression(
        GroupStats.from_matrix(x),
        GroupStats.from_matrix(y),
        method="wilcoxon",
        perturbed_matrix=x[:20],
        control_matrix=y[:30],
    )
    np.testing.assert_allclose(result.effect, x.mean(axis=0) - y.mean(axis=0))
    ref = stats.mannwhitneyu(x[:20], y[:30], axis=0, method="asymptotic")
    np.testing.assert_allclose(result.pvalue, ref.pvalue, rtol=1e-12)
    with pytest.raises(ValueError, match="matrices"):
        differential_expression(GroupStats.from_matrix(x), GroupStats.from_matrix(y))


def test_differential_expression_finds_the_planted_genes():
    x, y = _groups(3)
    for method in ("welch", "wilcoxon"):
        result = differential_expression(x, y, method=method)
        up, down = top_de_genes(result, [f"G{i}" for i in range(30)], n_top=10)
        assert set(up) == {f"G{i}" for i in range(5)}, method
        assert down == []


def test_top_genes_order_threshold_and_ties():
    genes = ["A", "B", "C", "D", "E", "F"]
    effect = np.array([2.0, 1.0, -3.0, 2.0, 0.1, -0.5])
    result = DEResult(
        statistic=np.zeros(6),
        pvalue=np.zeros(6),
        padj=np.array([0.001, 0.01, 0.001, 0.001, 0.001, 0.2]),
        effect=effect,
        log2_fold_change=effect.astype(np.float32),
        method="welch",
        n_perturbed=10,
        n_control=10,
    )
    up, down = top_de_genes(result, genes, n_top=3, alpha=0.05, min_abs_effect=0.5)
    assert up == ["A", "D", "B"]  # A before D: tie kept in vocabulary order
    assert down == ["C"]  # F not significant, E below the effect threshold
    assert result.ranked_significant().tolist() == [2, 0, 3, 1, 4]
