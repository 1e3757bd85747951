"""Fidelity metrics on pseudo-bulk arrays, defined as Arc Institute's ``cell-eval`` defines them.

Every function takes plain arrays: one pseudo-bulk (mean log-normalized expression over a
perturbation's cells) per row, genes in columns, predicted and real rows aligned. A 1-D input
is one perturbation and gives a float; a 2-D input gives one value per row.

Definitions (``cell-eval`` 0.8.2 names; the evaluation tests compare them with ``cell-eval``):

- ``pearson_delta``: Pearson correlation between the predicted change from control
  (``pred - pred_control``) and the real one (``real - real_control``). The predicted control
  is the control as the predictor sees it: for sentence models, control cells passed through
  the same encode -> decode, so both sides carry the decoder's bias.
- ``mae`` / ``mse``: mean absolute / squared error between predicted and real pseudo-bulks
  (not deltas); ``mae_delta`` / ``mse_delta`` on the deltas.
- ``pearson_delta_top_k`` (not in ``cell-eval``): ``pearson_delta`` restricted to the ``k``
  genes with the largest real change ``|real - real_control|`` (GEARS' "top DE genes" reading,
  computable from pseudo-bulks alone, so the same number in evaluation and in the reward).
- ``pearson_specific`` (not in ``cell-eval``; the idea of Systema, Vinas Torne et al. 2025):
  ``pearson_delta`` on the change *relative to the mean training response* of the same cell
  context. With ``m`` the mean over training perturbations (each weighs 1) of their change from
  the training control (what the ``mean`` baseline predicts), the specific change of a profile
  ``x`` with control ``c`` is ``x - max(c + m, 0)`` (the ``mean`` baseline's prediction on that
  control, clipped at 0 as expression is; ``= (x - c) - m`` where nothing clips). Predicted and
  real changes share their control, so on a near-null perturbation any prediction of the average
  response correlates with the real change; subtracting ``m`` removes that shared part. A
  predicted specific change that is exactly 0 (the ``mean`` baseline) scores 0: it predicts
  nothing specific. ``pearson_specific_top_k`` restricts it to the ``k`` genes of largest
  ``|real specific change|``.

A correlation with a constant vector is undefined: it is NaN here (as ``scipy.stats.pearsonr``
gives in ``cell-eval``) unless ``zero_variance=`` names a value, which rewards do. Changes from
control smaller than ``CHANGE_TOLERANCE`` times the expression level are rounding (a float32
prediction of "no change" differs from its control by ~1e-7) and count as exactly zero.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CHANGE_TOLERANCE",
    "change_from_control",
    "pearson_rows",
    "pearson_delta",
    "pearson_delta_top_k",
    "specific_change",
    "average_response_fraction",
    "pearson_specific",
    "pearson_specific_rows",
    "pearson_specific_top_k",
    "top_k_changed_genes",
    "mae",
    "mse",
    "mae_delta",
    "mse_delta",
]


CHANGE_TOLERANCE = 1e-6


def change_from_control(values: np.ndarray, control: np.ndarray) -> np.ndarray:
    """``values - control``, with changes below rounding (``CHANGE_TOLERANCE``) set to 0."""
    values = np.asarray(values, dtype=np.float64)
    control = np.asarray(control, dtype=np.float64)
    delta = values - control
    level = np.maximum(np.abs(values), np.abs(control))
    return np.where(np.abs(delta) <= CHANGE_TOLERANCE * level, 0.0, delta)


def _as_2d(*arrays: np.ndarray) -> tuple[bool, list[np.ndarray]]:
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    shapes = {a.shape for a in out}
    if len(shapes) != 1:
        raise ValueError(f"arrays must share one shape; got {[a.shape for a in out]}.")
    one_d = out[0].ndim == 1
    if out[0].ndim not in (1, 2):
        raise ValueError(
            f"expected 1-D or 2-D arrays (perturbations x genes), got {out[0].ndim}-D."
        )
    return one_d, [a[None, :] if one_d else a for a in out]


def _result(values: np.ndarray, one_d: bool):
    return float(values[0]) if one_d else values


def pearson_rows(a: np.ndarray, b: np.ndarray, *, zero_variance: float = np.nan):
    """Pearson correlation of each row of ``a`` with the same row of ``b``.

    Parameters
    ----------
    a, b
        Same-shape 1-D or 2-D arrays.
    zero_variance
        Value where either row is constant or not finite (default NaN).
    """
    one_d, (a, b) = _as_2d(a, b)
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    num = np.einsum("ij,ij->i", ac, bc)
    den = np.sqrt(np.einsum("ij,ij->i", ac, ac) * np.einsum("ij,ij->i", bc, bc))
    # relative guard: a row whose spread is rounding noise counts as constant
    scale = np.maximum(np.abs(a).max(axis=1), 1e-300) * np.maximum(np.abs(b).max(axis=1), 1e-300)
    ok = np.isfinite(num) & np.isfinite(den) & (den > 1e-12 * scale * a.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(ok, num / np.where(ok, den, 1.0), zero_variance)
    return _result(np.clip(r, -1.0, 1.0) if np.isfinite(zero_variance) else r, one_d)


def pearson_delta(
    pred: np.ndarray,
    pred_control: np.ndarray,
    real: np.ndarray,
    real_control: np.ndarray,
    *,
    zero_variance: float = np.nan,
):
    """Pearson correlation of predicted and real changes from control (``cell-eval``).

    ``pred_control`` / ``real_control`` are 1-D (one control for every row) or the shape of
    ``pred`` / ``real``.
    """
    return pearson_rows(
        change_from_control(pred, pred_control),
        change_from_control(real, real_control),
        zero_variance=zero_variance,
    )


def top_k_changed_genes(real_delta: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest ``|real_delta|`` per row (ties: lower index first)."""
    real_delta = np.asarray(real_delta, dtype=np.float64)
    if k < 1:
        raise ValueError(f"k={k}; need at least one gene.")
    k = min(k, real_delta.shape[-1])
    order = np.argsort(-np.abs(real_delta), axis=-1, kind="stable")
    return order[..., :k]


def pearson_delta_top_k(
    pred_delta: np.ndarray,
    real_delta: np.ndarray,
    k: int = 20,
    *,
    zero_variance: float = np.nan,
):
    """``pearson_delta`` on the ``k`` genes that change most in the real data.

    Takes deltas (``pred - pred_control``, ``real - real_control``).
    """
    one_d, (p, r) = _as_2d(pred_delta, real_delta)
    idx = top_k_changed_genes(r, k)
    rows = np.arange(p.shape[0])[:, None]
    return _result(pearson_rows(p[rows, idx], r[rows, idx], zero_variance=zero_variance), one_d)


def specific_change(
    values: np.ndarray, control: np.ndarray, reference_delta: np.ndarray
) -> np.ndarray:
    """Change of ``values`` from ``max(control + reference_delta, 0)``, rounding set to 0.

    ``reference_delta`` is the mean training change of the context (the ``mean`` baseline's
    prediction); the result is ``(values - control) - reference_delta`` wherever the reference
    profile stays >= 0. Arguments broadcast like ``values - control``.
    """
    values = np.asarray(values, dtype=np.float64)
    control = np.asarray(control, dtype=np.float64)
    reference_delta = np.asarray(reference_delta, dtype=np.float64)
    reference = np.maximum(control + reference_delta, 0.0)
    delta = values - reference
    # rounding is judged on the terms' scale: control + reference_delta can cancel to ~1e-10
    # where the prediction was clipped to exactly 0 (real data: the mean baseline at such genes)
    level = np.maximum(np.abs(values), np.abs(control) + np.abs(reference_delta))
    return np.where(np.abs(delta) <= CHANGE_TOLERANCE * level, 0.0, delta)


def average_response_fraction(values: np.ndarray, control: np.ndarray, reference_delta: np.ndarray):
    """How much of the average response a change contains: its projection coefficient on it.

    With ``d = values - control`` (rounding set to 0) and the reference change
    ``r = max(control + reference_delta, 0) - control`` (the ``mean`` baseline's change, clipped
    as :func:`specific_change` clips it), returns ``<d, r> / <r, r>`` per row: 1 for the ``mean``
    baseline, 0 for no change or a change orthogonal to ``r``, 0.25 for a quarter of the
    average response plus anything orthogonal to it; NaN where ``r`` is zero.
    """
    one_d, (v, c, ref) = _as_2d(
        *np.broadcast_arrays(
            np.asarray(values, dtype=np.float64),
            np.asarray(control, dtype=np.float64),
            np.asarray(reference_delta, dtype=np.float64),
        )
    )
    reference = np.maximum(c + ref, 0.0) - c
    delta = change_from_control(v, c)
    norm = np.einsum("ij,ij->i", reference, reference)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(norm > 0, np.einsum("ij,ij->i", delta, reference) / norm, np.nan)
    return _result(out, one_d)


def pearson_specific_rows(
    pred_specific: np.ndarray, real_specific: np.ndarray, *, zero_variance: float = np.nan
):
    """Pearson correlation of specific changes, row by row.

    A predicted row that is exactly 0 everywhere predicts nothing specific and scores 0 (where
    the real row varies); a constant real row gives ``zero_variance`` (default NaN), as does a
    constant non-zero prediction.
    """
    one_d, (p, r) = _as_2d(pred_specific, real_specific)
    out = np.asarray(pearson_rows(p, r, zero_variance=zero_variance), dtype=np.float64)
    # pearson_rows(r, r) is finite exactly where the real row varies (same rounding guard)
    real_varies = np.isfinite(np.asarray(pearson_rows(r, r), dtype=np.float64))
    nothing_specific = ~np.any(p != 0.0, axis=1)
    out = np.where(nothing_specific & real_varies, 0.0, out)
    return _result(out, one_d)


def pearson_specific(
    pred: np.ndarray,
    pred_control: np.ndarray,
    real: np.ndarray,
    real_control: np.ndarray,
    reference_delta: np.ndarray,
    *,
    zero_variance: float = np.nan,
):
    """Pearson correlation of predicted and real changes relative to the mean training change.

    Parameters
    ----------
    pred, real
        Pseudo-bulks (1-D, or one row per perturbation).
    pred_control, real_control
        The control each side is measured against (as in :func:`pearson_delta`).
    reference_delta
        The mean training change of the cell context (1-D over the genes, or one row per
        perturbation).
    zero_variance
        Value where the real specific change is constant.
    """
    return pearson_specific_rows(
        specific_change(pred, pred_control, reference_delta),
        specific_change(real, real_control, reference_delta),
        zero_variance=zero_variance,
    )


def pearson_specific_top_k(
    pred_specific: np.ndarray,
    real_specific: np.ndarray,
    k: int = 20,
    *,
    zero_variance: float = np.nan,
):
    """``pearson_specific`` on the ``k`` genes of largest ``|real specific change|``.

    Takes specific changes (:func:`specific_change` of each side).
    """
    one_d, (p, r) = _as_2d(pred_specific, real_specific)
    idx = top_k_changed_genes(r, k)
    rows = np.arange(p.shape[0])[:, None]
    got = pearson_specific_rows(p[rows, idx], r[rows, idx], zero_variance=zero_variance)
    return _result(np.atleast_1d(got), one_d)


def mae(pred: np.ndarray, real: np.ndarray):
    """Mean absolute error between predicted and real pseudo-bulks (``cell-eval`` ``mae``)."""
    one_d, (p, r) = _as_2d(pred, real)
    return _result(np.abs(p - r).mean(axis=1), one_d)


def mse(pred: np.ndarray, real: np.ndarray):
    """Mean squared error between predicted and real pseudo-bulks (``cell-eval`` ``mse``)."""
    one_d, (p, r) = _as_2d(pred, real)
    return _result(((p - r) ** 2).mean(axis=1), one_d)


def mae_delta(pred_delta: np.ndarray, real_delta: np.ndarray):
    """Mean absolute error between predicted and real changes from control."""
    return mae(pred_delta, real_delta)


def mse_delta(pred_delta: np.ndarray, real_delta: np.ndarray):
    """Mean squared error between predicted and real changes from control."""
    return mse(pred_delta, real_delta)
