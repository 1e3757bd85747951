import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import pearsonr

from cellrlhf.metrics.fidelity import (
    average_response_fraction,
    mae,
    mae_delta,
    mse,
    mse_delta,
    pearson_delta,
    pearson_delta_top_k,
    pearson_rows,
    pearson_specific,
    pearson_specific_top_k,
    specific_change,
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


# ---------------------------------------------------------------- perturbation-specific metrics


def test_pearson_specific_hand_computed():
    # deltas: pred [1, 0, -1], real [2, 0, 1]; mean training change m = [1, 1, 0]
    # specific: pred [0, -1, -1], real [1, -1, 1] -> centred [2, -1, -1] / 3 and [2, -4, 2] / 3
    # r = (4 + 4 - 2) / sqrt(6 * 24) = 0.5
    m = np.array([1.0, 1.0, 0.0])
    got = pearson_specific([2, 1, 0], [1, 1, 1], [3, 1, 2], [1, 1, 1], m)
    assert got == pytest.approx(0.5)
    # with m = 0 it is pearson_delta: [1, 0, -1] vs [2, 0, 1] -> 3 / sqrt(2 * 14 / 3)
    assert pearson_specific([2, 1, 0], [1, 1, 1], [3, 1, 2], [1, 1, 1], 0 * m) == pytest.approx(
        pearson_delta([2, 1, 0], [1, 1, 1], [3, 1, 2], [1, 1, 1])
    )


def test_mean_baseline_scores_zero_and_constant_truth_is_undefined():
    m = np.array([1.0, 1.0, 0.0])
    ctrl = np.array([1.0, 2.0, 3.0])
    real = np.array([4.0, 2.0, 3.0])
    # the mean baseline predicts control + m: nothing specific -> 0, not NaN
    assert pearson_specific(ctrl + m, ctrl, real, ctrl, m) == 0.0
    # float32 rounding of that prediction is still "nothing"
    assert pearson_specific((ctrl + m).astype(np.float32), ctrl, real, ctrl, m) == 0.0
    # the reference profile is clipped at 0 as expression is: control 0.2, m -0.5 -> 0
    low_ctrl, low_m = np.array([0.2, 1.0, 1.0]), np.array([-0.5, 1.0, 0.0])
    assert pearson_specific([0.0, 2.0, 1.0], low_ctrl, real, low_ctrl, low_m) == 0.0
    np.testing.assert_allclose(specific_change([0.0, 2.0, 1.0], low_ctrl, low_m), 0.0)
    # a real response that is exactly the mean response is constant (0) -> undefined
    assert np.isnan(pearson_specific([5.0, 1.0, 0.0], ctrl, ctrl + m, ctrl, m))
    # a constant, non-zero predicted specific change is undefined too
    assert np.isnan(pearson_specific(ctrl + m + 1.0, ctrl, real, ctrl, m))
    # the control baseline predicts -m: defined (it says "less than the average response")
    assert np.isfinite(pearson_specific(ctrl, ctrl, real, ctrl, m))


def test_pearson_specific_matches_numpy_corrcoef():
    rng = np.random.default_rng(1)
    ctrl = rng.uniform(5, 6, 50)  # high enough that nothing clips
    m = rng.normal(0, 0.5, 50)
    pred, real = ctrl + rng.normal(0, 1, (4, 50)), ctrl + rng.normal(0, 1, (4, 50))
    got = pearson_specific(pred, ctrl, real, ctrl, m)
    want = [np.corrcoef(p - ctrl - m, r - ctrl - m)[0, 1] for p, r in zip(pred, real, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # top-k: the k genes of largest |real specific change|, then np.corrcoef on them
    ps, rs = specific_change(pred, ctrl, m), specific_change(real, ctrl, m)
    top = pearson_specific_top_k(ps, rs, k=10)
    for i in range(4):
        idx = np.argsort(-np.abs(rs[i]), kind="stable")[:10]
        assert top[i] == pytest.approx(np.corrcoef(ps[i, idx], rs[i, idx])[0, 1], rel=1e-10)


def test_pearson_specific_top_k_hand_computed():
    real_specific = np.array([0.1, -5.0, 3.0, 0.2, 0.0])
    pred_specific = np.array([9.0, -1.0, 1.0, -9.0, 0.0])  # right on genes 1, 2 only
    assert pearson_specific_top_k(pred_specific, real_specific, k=2) == pytest.approx(1.0)
    # nothing specific on the top genes -> 0
    assert pearson_specific_top_k(np.array([9.0, 0, 0, 1, 0]), real_specific, k=2) == 0.0


_eighths = st.integers(-40, 40).map(lambda i: i / 8.0)  # exact in binary: no rounding


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(_eighths, _eighths, _eighths), min_size=3, max_size=12),
)
def test_specific_change_properties(rows):
    pred_delta, real_delta, m = (np.asarray(col) for col in zip(*rows, strict=True))
    assume(np.ptp(real_delta) > 0)
    ctrl = np.full(len(m), 64.0)  # no clipping
    # adding the mean response to both sides leaves the specific version = pearson_delta
    shifted = pearson_specific(ctrl + pred_delta + m, ctrl, ctrl + real_delta + m, ctrl, m)
    plain = pearson_delta(ctrl + pred_delta, ctrl, ctrl + real_delta, ctrl)
    if not pred_delta.any():
        assert shifted == 0.0  # nothing specific predicted (pearson_delta: undefined)
    elif np.isnan(plain):
        assert np.isnan(shifted)  # a constant prediction stays undefined
    else:
        assert shifted == pytest.approx(plain, abs=1e-9)
    # the mean baseline scores exactly 0 whenever the truth varies around the mean
    real = ctrl + real_delta
    if np.ptp(real_delta - m) > 0:
        assert pearson_specific(ctrl + m, ctrl, real, ctrl, m) == 0.0
    # the specific change is the change minus the reference
    np.testing.assert_allclose(specific_change(real, ctrl, m), real_delta - m, atol=1e-12)


def test_specific_change_of_the_mean_prediction_is_zero_where_the_reference_clips_near_zero():
    # real data (McFaline U87MG): control + mean change = +5e-10 by float64 round-off, while the
    # mean baseline's prediction, clipped at 0 in float32, is 0 there; that is rounding, not a
    # specific change, and must not give the mean baseline a non-zero pearson_specific
    ctrl = np.array([0.01722336, 0.5, 0.3])
    m = np.array([-0.01722336 + 5e-10, 0.1, -0.2])
    pred = np.maximum(ctrl + m, 0.0).astype(np.float32)
    pred[0] = 0.0
    np.testing.assert_array_equal(specific_change(pred, ctrl, m), 0.0)


def test_pearson_rows_of_a_constant_response_is_the_given_value():
    # hard negatives compare two responses this way: a constant one correlates 0
    assert pearson_rows(np.ones(5), np.arange(5.0), zero_variance=0.0) == 0.0
    assert np.isnan(pearson_rows(np.ones(5), np.arange(5.0)))
    assert pearson_rows(np.arange(5.0), 2 * np.arange(5.0), zero_variance=0.0) == pytest.approx(1.0)


def test_average_response_fraction_hand_computed():
    ctrl = np.array([1.0, 1.0, 1.0, 1.0])
    m = np.array([1.0, -1.0, 0.0, 2.0])  # |m|^2 = 6
    # a quarter of the average response plus a change orthogonal to it: 0.25
    quarter = ctrl + 0.25 * m + np.array([1.0, 1.0, 5.0, 0.0])
    assert average_response_fraction(quarter, ctrl, m) == pytest.approx(0.25)
    assert average_response_fraction(ctrl + m, ctrl, m) == pytest.approx(1.0)  # the mean baseline
    assert average_response_fraction(ctrl + 2 * m, ctrl, m) == pytest.approx(2.0)  # overshoot
    assert average_response_fraction(ctrl, ctrl, m) == 0.0  # no change
    assert average_response_fraction(ctrl - m, ctrl, m) == pytest.approx(-1.0)  # the opposite
    assert np.isnan(average_response_fraction(ctrl + m, ctrl, np.zeros(4)))  # no reference
    # rows, one control and reference broadcast over them
    rows = np.stack([ctrl + m, ctrl + 0.5 * m])
    np.testing.assert_allclose(average_response_fraction(rows, ctrl, m), [1.0, 0.5])


def test_average_response_fraction_clips_the_reference_like_the_specific_change():
    # control 0.5 and a mean change of -2 on gene 0: the mean baseline predicts 0 there (clipped),
    # a change of -0.5; the reference change is clipped the same way, so it scores exactly 1
    ctrl = np.array([0.5, 1.0, 2.0])
    m = np.array([-2.0, 1.0, 0.0])
    mean_prediction = np.maximum(ctrl + m, 0.0)
    assert average_response_fraction(mean_prediction, ctrl, m) == pytest.approx(1.0)
    # reference change [-0.5, 1, 0], |r|^2 = 1.25; the prediction's change [-1, 0, 3]: 0.5 / 1.25
    assert average_response_fraction(ctrl + np.array([-1.0, 0.0, 3.0]), ctrl, m) == pytest.approx(
        0.4
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(_eighths, _eighths), min_size=3, max_size=12),
    st.integers(-16, 16).map(lambda i: i / 8.0),
)
def test_average_response_fraction_recovers_the_share_of_the_average_response(rows, share):
    m, other = (np.asarray(col) for col in zip(*rows, strict=True))
    assume(np.abs(m).sum() > 0)
    orthogonal = other - (other @ m) / (m @ m) * m
    ctrl = np.full(len(m), 64.0)  # no clipping
    value = average_response_fraction(ctrl + share * m + orthogonal, ctrl, m)
    assert value == pytest.approx(share, abs=1e-9)
