import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import energy_distance as scipy_energy

from cellrlhf.reward.distribution import (
    ReferenceCells,
    energy_coefficient,
    energy_distance,
    group_distance_with_leave_one_out,
    mmd_rbf,
)


def test_energy_distance_matches_scipy_in_one_dimension():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=9), rng.normal(1.0, 2.0, size=13)
    # scipy returns the square root of the (V-statistic) energy distance
    assert energy_distance(u[:, None], v[:, None]) == pytest.approx(scipy_energy(u, v) ** 2)


def test_energy_coefficient_bounds():
    X = np.array([[0.0, 1.0], [2.0, 0.0]])
    assert energy_coefficient(X, X) == pytest.approx(0.0, abs=1e-12)
    far = energy_coefficient(X, X + 1000.0)
    assert 0.99 < far <= 1.0
    point = np.zeros((3, 2))
    assert energy_coefficient(point, point) == 0.0


def test_mmd_hand_computed():
    X, Y = np.array([[0.0]]), np.array([[1.0]])
    # k(x,x)=k(y,y)=1, k(x,y)=exp(-gamma): MMD^2 = 2 - 2 exp(-gamma)
    assert mmd_rbf(X, Y, gamma=0.5) == pytest.approx(2 - 2 * np.exp(-0.5))


@pytest.mark.parametrize("distance", ["energy", "mmd"])
def test_leave_one_out_matches_recomputation(distance):
    rng = np.random.default_rng(1)
    X = rng.gamma(1.0, 1.0, (6, 10)) * (rng.random((6, 10)) < 0.5)
    Y = rng.gamma(1.0, 1.0, (9, 10)) * (rng.random((9, 10)) < 0.5)
    ref = ReferenceCells.from_matrix(sp.csr_matrix(Y))

    def direct(block):
        if distance == "energy":
            return energy_coefficient(block, Y)
        return mmd_rbf(block, Y, gamma=ref.gamma)

    value, loo = group_distance_with_leave_one_out(sp.csr_matrix(X), ref, distance=distance)
    assert value == pytest.approx(direct(X))
    want = [direct(np.delete(X, i, axis=0)) for i in range(len(X))]
    np.testing.assert_allclose(loo, want, rtol=1e-7, atol=1e-10)
    dense_value, dense_loo = group_distance_with_leave_one_out(
        X, ref, distance=distance, reference_dense=Y
    )
    assert dense_value == pytest.approx(value)
    np.testing.assert_allclose(dense_loo, loo)


def test_reference_needs_cells():
    with pytest.raises(ValueError, match="no reference cells"):
        ReferenceCells.from_matrix(np.zeros((0, 3)))
