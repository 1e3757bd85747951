import numpy as np
import pytest
import scipy.sparse as sp

from cellrlhf.metrics.fidelity import pearson_rows
from cellrlhf.reward.jackknife import group_pearson_with_leave_one_out


def _brute_force(X, codes, control, truth, mask):
    n_groups = truth.shape[0]
    group = np.zeros(n_groups)
    loo = np.zeros(X.shape[0])
    for g in range(n_groups):
        rows = np.flatnonzero(codes == g)
        genes = mask[g]

        def r(block, g=g, genes=genes):
            return pearson_rows(
                block.mean(0)[genes] - control[g, genes], truth[g, genes], zero_variance=0.0
            )

        group[g] = r(X[rows])
        for i in rows:
            others = rows[rows != i]
            loo[i] = r(X[others]) if len(others) else group[g]
    return group, loo


@pytest.mark.parametrize("use_mask", [False, True])
def test_matches_brute_force(use_mask):
    rng = np.random.default_rng(0)
    n_genes, sizes = 25, [8, 1, 3, 5]
    codes = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(codes)
    X = rng.gamma(1.0, 1.0, (len(codes), n_genes)) * (rng.random((len(codes), n_genes)) < 0.4)
    control = rng.random((len(sizes), n_genes))
    truth = rng.normal(size=(len(sizes), n_genes))
    mask = rng.random((len(sizes), n_genes)) < 0.5 if use_mask else np.ones_like(truth, bool)
    got = group_pearson_with_leave_one_out(
        sp.csr_matrix(X), codes, control, truth, gene_mask=mask if use_mask else None
    )
    group, loo = _brute_force(X, codes, control, truth, mask)
    np.testing.assert_allclose(got.group, group, atol=1e-10)
    np.testing.assert_allclose(got.leave_one_out, loo, atol=1e-9)
    assert got.defined.all()


def test_constant_truth_and_constant_prediction_give_zero():
    X = sp.csr_matrix(np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
    codes = np.array([0, 0, 1])
    control = np.zeros((2, 3))
    truth = np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 0.0]])
    got = group_pearson_with_leave_one_out(X, codes, control, truth)
    assert got.defined.tolist() == [False, True]
    assert got.group.tolist() == [0.0, 0.0]  # undefined truth; all-zero prediction
    assert np.all(np.isfinite(got.leave_one_out))


def test_shape_errors():
    with pytest.raises(ValueError, match="shapes"):
        group_pearson_with_leave_one_out(
            sp.csr_matrix((2, 3)), np.zeros(2, int), np.zeros((1, 4)), np.zeros((1, 4))
        )
