import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import mannwhitneyu

from cellrlhf.reward.de import (
    DifferentialExpression,
    differential_expression,
    direction_match,
    mann_whitney_u,
    overlap_at_n,
    precision_at_n,
    sig_genes_recall,
    signed_overlap_at_n,
)


def test_mann_whitney_matches_scipy_asymptotic_with_ties():
    rng = np.random.default_rng(0)
    x = np.round(rng.gamma(1.0, 1.0, (30, 12)), 1)
    y = np.round(rng.gamma(1.3, 1.0, (25, 12)), 1)
    x[:, 3] = y[:, 3] = 0.0  # constant gene: no evidence, p = 1
    x[:10, 4] = 0.0
    u, p = mann_whitney_u(x, sp.csr_matrix(y))
    ref = mannwhitneyu(x, y, axis=0, method="asymptotic")
    keep = np.arange(12) != 3
    np.testing.assert_allclose(u, ref.statistic)
    np.testing.assert_allclose(p[keep], ref.pvalue[keep], rtol=1e-10)
    assert p[3] == 1.0


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
    assert de.p_value[1] == 1.0


def _de(lfc, fdr):
    lfc = np.asarray(lfc, dtype=np.float32)
    return DifferentialExpression(lfc, np.asarray(fdr, float), np.asarray(fdr, float))


def test_overlap_metrics_hand_computed():
    # real significant genes by |lfc|: 0 (4), 2 (-3), 3 (2); gene 1 not significant
    real = _de([4.0, 9.0, -3.0, 2.0, 0.5], [0.01, 0.5, 0.01, 0.01, 0.9])
    # predicted significant by |lfc|: 2 (+5), 4 (3), 0 (1)
    pred = _de([1.0, 0.0, 5.0, 0.1, 3.0], [0.01, 0.9, 0.01, 0.9, 0.01])
    assert real.ranked_significant().tolist() == [0, 2, 3]
    assert pred.ranked_significant().tolist() == [2, 4, 0]
    assert overlap_at_n(real, pred) == pytest.approx(2 / 3)  # {0,2,3} & {2,4,0}
    assert overlap_at_n(real, pred, k=1) == 0.0  # {0} vs {2}
    assert overlap_at_n(real, pred, k=2) == pytest.approx(1 / 2)  # {0,2} & {2,4}
    assert precision_at_n(real, pred) == pytest.approx(2 / 3)
    # gene 2 goes down in real, up in prediction: only gene 0 counts
    assert signed_overlap_at_n(real, pred) == pytest.approx(1 / 3)
    # real significant 0, 2, 3: signs (+, -, +) vs predicted (+, +, +)
    assert direction_match(real, pred) == pytest.approx(2 / 3)
    assert sig_genes_recall(real, pred) == pytest.approx(2 / 3)


def test_overlap_without_significant_genes():
    none = _de([1.0, 2.0], [0.5, 0.5])
    some = _de([1.0, 2.0], [0.01, 0.01])
    assert overlap_at_n(none, some) == 0.0
    assert overlap_at_n(some, none) == 0.0
    assert np.isnan(direction_match(none, some))
    assert np.isnan(sig_genes_recall(none, some))


def test_ties_in_fold_change_keep_gene_order():
    de = _de([2.0, -2.0, 2.0], [0.01, 0.01, 0.01])
    assert de.ranked_significant().tolist() == [0, 1, 2]
