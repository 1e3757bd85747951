"""Fidelity metrics on pseudo-bulk arrays, defined as Arc Institute's ``cell-eval`` defines them.

Every function takes plain arrays: one pseudo-bulk (mean log-normalized expression over a
perturbation's cells) per row, genes in columns, predicted and real rows aligned. A 1-D input
is one perturbation and gives a float; a 2-D input gives one value per row.

Definitions (``cell-eval`` 0.8.2 names; tested against it in ``tests/reward``):

- ``pearson_delta``: Pearson correlation between the predicted change from control
  (``pred - pred_control``) and the real one (``real - real_control``). The predicted control
  is the control as the predictor sees it: for sentence models, control cells passed through
  the same encode -> decode, so both sides carry the decoder's bias.
- ``mae`` / ``mse``: mean absolute / squared error between predicted and real pseudo-bulks
  (not deltas); ``mae_delta`` / ``mse_delta`` on the deltas.
- ``pearson_delta_top_k`` (not in ``cell-eval``): ``pearson_delta`` restricted to the ``k``
  genes with the largest real change ``|real - real_control|`` (GEARS' "top DE genes" reading,
  computable from pseudo-bulks alone, so the same number in evaluation and in the reward).

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
