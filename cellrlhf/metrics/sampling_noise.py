"""How much of a sampled prediction is sampling noise: split-half reliability.

A generative model predicts a perturbation's profile as the pseudo-bulk of cells it samples.
With few cells, or short cells (a cell sentence of ~15 expressed genes says little about the
other genes), that pseudo-bulk is mostly noise, and a model that knows the right answer still
scores like one that does not. :func:`split_half_change_reliability` measures this from the
prediction alone: the predicted cells of each perturbation are split into two halves
(alternating), each half's change from the control is computed, and the correlation of the two
changes is stepped up to the full number of cells with the Spearman-Brown formula
(:func:`spearman_brown`). Near 1: more cells would not change the prediction. Well below 1:
sample more cells (or the prediction has almost no change to reproduce).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cellrlhf.metrics.fidelity import pearson_rows

__all__ = ["spearman_brown", "split_half_change_reliability", "MIN_CELLS"]

# fewer predicted cells than this per perturbation: no reliability (NaN)
MIN_CELLS = 8


def spearman_brown(r):
    """Full-depth reliability from a split-half correlation: ``2r / (1 + r)`` (NaN for r <= 0).

    Parameters
    ----------
    r
        Correlation(s) between two halves.

    Returns
    -------
    float or numpy.ndarray
        The reliability of the whole (same shape as ``r``).
    """
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(r > 0, 2.0 * r / (1.0 + r), np.nan)
    return float(out) if out.ndim == 0 else out


def _mean_rows(X, idx: np.ndarray, genes: np.ndarray | None) -> np.ndarray:
    part = X[idx]
    mean = np.asarray(part.mean(axis=0)).ravel()
    return mean if genes is None else mean[genes]


def split_half_change_reliability(
    X,
    codes: np.ndarray,
    groups: np.ndarray,
    control: np.ndarray,
    *,
    genes: np.ndarray | None = None,
    min_cells: int = MIN_CELLS,
) -> np.ndarray:
    """Split-half reliability of each group's predicted change from ``control``.

    Parameters
    ----------
    X
        Predicted cells (cells x genes; dense or scipy sparse).
    codes
        Group code of each row of ``X``.
    groups
        The codes to score, in output order.
    control
        The control profile the changes are taken from (on the selected ``genes``); shared by
        both halves, so only the noise of the sampled cells is measured. 2-D: one profile per
        entry of ``groups`` (rows in its order).
    genes
        Column indices of ``X`` to use (default: all, in order).
    min_cells
        Groups with fewer cells get NaN.

    Returns
    -------
    numpy.ndarray
        One value per group: ``spearman_brown(pearson(mean(half A) - control, mean(half B) -
        control))``, the halves being the group's cells at even and odd positions; NaN where the
        group has fewer than ``min_cells`` cells or a half's change is constant.
    """
    if sp.issparse(X):
        X = X.tocsr()
    codes = np.asarray(codes)
    control = np.asarray(control, dtype=np.float64)
    if control.ndim == 2 and len(control) != len(groups):
        raise ValueError(
            f"control has {len(control)} profiles for {len(groups)} groups; give one per group "
            "or a single profile."
        )
    out = np.full(len(groups), np.nan)
    for i, g in enumerate(groups):
        idx = np.flatnonzero(codes == g)
        if idx.size < min_cells:
            continue
        profile = control[i] if control.ndim == 2 else control
        a = _mean_rows(X, idx[0::2], genes) - profile
        b = _mean_rows(X, idx[1::2], genes) - profile
        out[i] = spearman_brown(pearson_rows(a, b))
    return out
