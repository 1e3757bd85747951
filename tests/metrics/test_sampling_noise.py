import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from cellrlhf.metrics.sampling_noise import spearman_brown, split_half_change_reliability


def test_spearman_brown_exact():
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert spearman_brown(1.0) == 1.0
    assert np.isnan(spearman_brown(-0.2))
    np.testing.assert_allclose(spearman_brown([0.25, 0.0]), [0.4, np.nan])


def test_hand_computed_two_halves():
    # group 1: cells 0 and 2 (even positions) form half A, cells 1 and 3 half B
    X = np.array(
        [[1.0, 0.0, 2.0], [0.0, 1.0, 3.0], [3.0, 0.0, 2.0], [2.0, 1.0, 1.0], [9.0, 9.0, 9.0]]
    )
    codes = np.array([1, 1, 1, 1, 0])
    control = np.array([1.0, 1.0, 1.0])
    a = np.array([2.0, 0.0, 2.0]) - control  # mean of cells 0, 2
    b = np.array([1.0, 1.0, 2.0]) - control  # mean of cells 1, 3
    r = np.corrcoef(a, b)[0, 1]
    got = split_half_change_reliability(X, codes, np.array([1]), control, min_cells=4)
    np.testing.assert_allclose(got, [2 * r / (1 + r)])


def test_gene_subset_and_sparse_match_dense():
    rng = np.random.default_rng(0)
    X = rng.poisson(1.0, size=(40, 6)).astype(float)
    codes = np.repeat([0, 1], 20)
    genes = np.array([5, 0, 2, 3])
    control = X[:, genes].mean(axis=0) * 0.5
    dense = split_half_change_reliability(X, codes, np.array([0, 1]), control, genes=genes)
    sparse = split_half_change_reliability(
        sp.csr_matrix(X), codes, np.array([0, 1]), control, genes=genes
    )
    np.testing.assert_allclose(dense, sparse)


def test_one_control_profile_per_group_equals_separate_calls():
    rng = np.random.default_rng(1)
    X = rng.poisson(1.0, size=(40, 5)).astype(float)
    codes = np.repeat([0, 1], 20)
    profiles = rng.random((2, 5))
    both = split_half_change_reliability(X, codes, np.array([1, 0]), profiles)
    one = [split_half_change_reliability(X, codes, np.array([g]), profiles[i])[0]
           for i, g in enumerate([1, 0])]  # fmt: skip
    np.testing.assert_allclose(both, one)
    assert both[0] != both[1]
    with pytest.raises(ValueError, match="3 profiles for 2 groups"):
        split_half_change_reliability(X, codes, np.array([1, 0]), rng.random((3, 5)))


def test_too_few_cells_is_nan():
    X = np.eye(5)
    got = split_half_change_reliability(X, np.zeros(5), np.array([0]), np.zeros(5))
    assert np.isnan(got[0])  # 5 < the default 8 cells


def test_more_cells_more_reliable():
    """The same true change under the same per-cell noise: more cells, higher reliability."""
    rng = np.random.default_rng(1)
    change = np.linspace(-1.0, 1.0, 50)

    def reliability(n):
        X = change + rng.normal(0.0, 5.0, size=(n, 50))
        return split_half_change_reliability(X, np.zeros(n), np.array([0]), np.zeros(50))[0]

    few, many = reliability(16), reliability(4096)
    assert many > 0.9
    assert np.isnan(few) or few < 0.5


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=4, max_value=30), st.integers(min_value=0, max_value=10_000))
def test_identical_halves_are_fully_reliable(n_pairs, seed):
    rng = np.random.default_rng(seed)
    row = rng.normal(size=7)
    X = np.repeat(row[None, :], 2 * n_pairs, axis=0)  # every cell the same: no sampling noise
    got = split_half_change_reliability(X, np.zeros(2 * n_pairs), np.array([0]), np.zeros(7))
    assert got[0] == pytest.approx(1.0)
