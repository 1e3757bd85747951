import numpy as np
import pytest
from scipy.stats import pearsonr

from cellrlhf.reward.metrics import (
    mae,
    mae_delta,
    mse,
    mse_delta,
    pearson_delta,
    pearson_delta_top_k,
    pearson_rows,
    top_k_changed_genes,
)


def test_pearson_delta_hand_computed():
    # deltas [1, 2, 3] and [2, 4, 6]: perfectly correlated
    assert pearson_delta([1, 2, 3], [0, 0, 0], [2, 4, 7], [0, 0, 1]) == pytest.approx(1.0)
    # deltas x = [1, 0, -1], y = [1, 1, -2]: 3 / sqrt(2 * 6)
    got = pearson_delta([2, 1, 0], [1, 1, 1], [1, 1, -2], [0, 0, 0])
    assert got == pytest.approx(3 / np.sqrt(12))
    # anti-correlated
    assert pearson_delta([0, 1], [0, 0], [1, 0], [0, 0]) == pytest.approx(-1.0)


def test_pearson_rows_matches_scipy_and_handles_constants():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 40)), rng.normal(size=(5, 40))
    b[1] = a[1] * 2 + 1
    got = pearson_rows(a, b)
    want = [pearsonr(x, y)[0] for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert got[1] == pytest.approx(1.0)
    flat = np.vstack([np.full(40, 0.3), a[0]])
    r = pearson_rows(flat, b[:2])
    assert np.isnan(r[0]) and np.isfinite(r[1])
    assert pearson_rows(flat, b[:2], zero_variance=0.0)[0] == 0.0
    assert np.isnan(pearson_rows(np.full(3, np.nan), np.arange(3.0)))


def test_pearson_delta_broadcasts_one_control_over_rows():
    pred = np.array([[1.0, 2, 3, 5], [4, 1, 1, 0]])
    real = pred + 10  # same deltas up to the control offset
    r = pearson_delta(pred, np.zeros(4), real, np.full(4, 10.0))
    np.testing.assert_allclose(r, [1.0, 1.0])


def test_top_k_changed_genes_and_restricted_pearson():
    real_delta = np.array([0.1, -5.0, 3.0, 0.2, 0.0])
    assert top_k_changed_genes(real_delta, 2).tolist() == [1, 2]
    # ties keep gene order
    assert top_k_changed_genes(np.array([1.0, -1.0, 1.0]), 2).tolist() == [0, 1]
    pred_delta = np.array([9.0, -1.0, 1.0, -9.0, 0.0])  # wrong everywhere but genes 1, 2
    assert pearson_delta_top_k(pred_delta, real_delta, k=2) == pytest.approx(1.0)
    assert pearson_delta(pred_delta, 0, real_delta, 0) < 0.5
    with pytest.raises(ValueError):
        top_k_changed_genes(real_delta, 0)


def test_errors_hand_computed():
    pred = np.array([1.0, 2.0, 4.0])
    real = np.array([1.0, 0.0, 1.0])
    assert mae(pred, real) == pytest.approx((0 + 2 + 3) / 3)
    assert mse(pred, real) == pytest.approx((0 + 4 + 9) / 3)
    assert mae_delta(pred, real) == mae(pred, real)
    assert mse_delta(pred, real) == mse(pred, real)
    np.testing.assert_allclose(mae(np.vstack([pred, real]), np.vstack([real, real])), [5 / 3, 0])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="share one shape"):
        mae(np.zeros(3), np.zeros(4))
