"""Perturbation discrimination: can the true perturbation be picked out from its prediction?

For every predicted change from control, rank all real changes (every perturbation evaluated)
by their distance to it; the score is ``1 - rank / n_references`` where ``rank`` counts the
references closer than the true one (0 = the true perturbation is the nearest, score 1).
This is ``cell-eval``'s ``discrimination_score_{l1,l2,cosine}`` (Virtual Cell Challenge's
"perturbation discrimination score"), computed on pseudo-bulk deltas.

Two details follow ``cell-eval``: the perturbed target genes are left out of the distance
(``target_gene_mask``; for a combination ``A+B`` we drop both ``A`` and ``B``, where
``cell-eval`` compares the whole label ``"A+B"`` with gene names and so drops nothing), and the
candidates are every real perturbation in the evaluation. References at exactly the same
distance as the true one count half (``cell-eval`` breaks such ties by sort order), so a
constant prediction scores about 0.5 rather than whatever its position happens to be.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cellrlhf.cell2text.markup import split_perturbation

__all__ = ["DISTANCE_METRICS", "discrimination_score", "target_gene_mask", "pairwise_distances"]

DISTANCE_METRICS = ("l1", "l2", "cosine")


def target_gene_mask(
    perturbations: Sequence[str], genes: Sequence[str], *, sep: str = "+"
) -> np.ndarray:
    """Boolean ``(n_perturbations, n_genes)``: True where a gene is one of the row's targets.

    Gene names are compared case-insensitively.
    """
    position = {str(g).upper(): j for j, g in enumerate(genes)}
    mask = np.zeros((len(perturbations), len(genes)), dtype=bool)
    for i, pert in enumerate(perturbations):
        for target in split_perturbation(str(pert), sep=sep):
            j = position.get(target.upper())
            if j is not None:
                mask[i, j] = True
    return mask


def pairwise_distances(queries: np.ndarray, references: np.ndarray, metric: str) -> np.ndarray:
    """Distances ``(n_queries, n_references)`` between rows (``l1``, ``l2`` or ``cosine``)."""
    q = np.asarray(queries, dtype=np.float64)
    r = np.asarray(references, dtype=np.float64)
    if metric == "l1":
        return np.abs(q[:, None, :] - r[None, :, :]).sum(axis=2)
    if metric == "l2":
        sq = (q**2).sum(1)[:, None] + (r**2).sum(1)[None, :] - 2.0 * q @ r.T
        return np.sqrt(np.maximum(sq, 0.0))
    if metric == "cosine":
        qn = np.linalg.norm(q, axis=1)[:, None]
        rn = np.linalg.norm(r, axis=1)[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            sim = (q @ r.T) / (qn * rn)
        # sklearn's convention: a zero vector has cosine distance 1 to everything
        return 1.0 - np.where(np.isfinite(sim), sim, 0.0)
    raise ValueError(f"metric={metric!r}; choose one of {DISTANCE_METRICS}.")


def discrimination_score(
    pred_deltas: np.ndarray,
    real_deltas: np.ndarray,
    *,
    true_index: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    metric: str = "l1",
) -> np.ndarray:
    """Normalized rank of the true perturbation among all real ones, per predicted row.

    Parameters
    ----------
    pred_deltas
        ``(n_pred, n_genes)`` predicted changes from control.
    real_deltas
        ``(n_real, n_genes)`` real changes from control: the candidates.
    true_index
        Row of ``real_deltas`` that each prediction should match (default ``arange(n_pred)``,
        i.e. the same order).
    exclude
        Optional boolean ``(n_pred, n_genes)``: genes left out of row ``i``'s distances
        (usually ``target_gene_mask``).
    metric
        ``"l1"`` (Virtual Cell Challenge), ``"l2"`` or ``"cosine"``.

    Returns
    -------
    ``(n_pred,)`` scores in ``(0, 1]``; 1 means the true perturbation is the closest.
    """
    pred = np.atleast_2d(np.asarray(pred_deltas, dtype=np.float64))
    real = np.atleast_2d(np.asarray(real_deltas, dtype=np.float64))
    if pred.shape[1] != real.shape[1]:
        raise ValueError(f"gene counts differ: predicted {pred.shape[1]}, real {real.shape[1]}.")
    n_pred, n_real = pred.shape[0], real.shape[0]
    true_index = np.arange(n_pred) if true_index is None else np.asarray(true_index, dtype=int)
    if true_index.shape != (n_pred,) or (n_pred and (true_index.max() >= n_real)):
        raise ValueError("true_index needs one row of real_deltas per prediction.")
    if exclude is not None and np.asarray(exclude).shape != pred.shape:
        raise ValueError(f"exclude has shape {np.asarray(exclude).shape}; expected {pred.shape}.")
    scores = np.empty(n_pred, dtype=np.float64)
    for i in range(n_pred):
        keep = slice(None) if exclude is None else ~np.asarray(exclude[i], dtype=bool)
        d = pairwise_distances(pred[i : i + 1, keep], real[:, keep], metric)[0]
        d = np.where(np.isfinite(d), d, np.inf)
        own = d[true_index[i]]
        closer = np.count_nonzero(d < own)
        tied = np.count_nonzero(d == own) - 1
        scores[i] = 1.0 - (closer + 0.5 * tied) / n_real
    return scores
