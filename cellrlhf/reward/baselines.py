"""Baselines and ceilings: the MIN and MAX every perturbation result is read against.

Each baseline predicts the change from control of test perturbations from a *training*
AnnData (log-normalized, ``obs[pert_col]``, control cells labelled ``control``), and
:func:`prediction_adata` turns the predicted changes into a prediction AnnData (one pseudo-bulk
row per perturbation, on top of the control cells the evaluation uses), ready for
:func:`~cellrlhf.reward.evaluate.evaluate_predictions`:

- ``control``: no change at all ("nothing happens"; its ``pearson_delta`` is undefined);
- ``mean``: the mean change over all training perturbations (each perturbation weighs 1);
- ``additive``: for a combination ``A+B`` whose singles were trained, ``delta_A + delta_B``
  (only combinations are predicted);
- ``ridge``: ridge regression of the change on the perturbation's targets (one-hot per target
  seen in training, summed for combinations; or your own target features), penalty chosen by
  leave-one-out over the training perturbations;
- predicted pseudo-bulks (control mean + change) are clipped at 0, as expression is;
- ``nearest``: the training perturbation(s) sharing most targets (mean of ties), else ``mean``.

Ceilings, from the real test cells themselves:

- :func:`split_half`: each perturbation's cells and the control cells split in two disjoint
  halves (seeded); one half predicts the other (``cell-eval``'s data ceiling, at half depth;
  :func:`~cellrlhf.reward.evaluate.spearman_brown` maps correlations to full depth);
- :func:`representation_ceiling`: real cells written as sentences and decoded back, with the
  decoded control as the control. No sentence model can beat its decoder here; a better
  :class:`~cellrlhf.cell2text.decoder.ExpressionDecoder` raises it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellrlhf.cell2text.markup import split_perturbation
from cellrlhf.reward.pseudobulk import PseudoBulks, pseudobulk

__all__ = [
    "BASELINES",
    "PredictedDeltas",
    "control_baseline",
    "mean_baseline",
    "training_mean_delta",
    "additive_baseline",
    "ridge_baseline",
    "nearest_baseline",
    "predict_baselines",
    "prediction_adata",
    "split_half",
    "representation_ceiling",
]

logger = logging.getLogger(__name__)

BASELINES = ("control", "mean", "additive", "ridge", "nearest")


@dataclass(frozen=True)
class PredictedDeltas:
    """Predicted changes from control for some perturbations.

    Attributes
    ----------
    perturbations
        Labels, one per row (perturbations a baseline cannot predict are left out).
    deltas
        ``(n, n_genes)`` predicted change from control.
    genes
        Column names.
    params
        How the prediction was made (e.g. the ridge penalty chosen).
    """

    perturbations: np.ndarray
    deltas: np.ndarray
    genes: np.ndarray
    params: dict = field(default_factory=dict)


def _targets(perturbation: str, sep: str) -> frozenset[str]:
    return frozenset(t.upper() for t in split_perturbation(perturbation, sep=sep))


def _train_bulks(train, pert_col: str, control: str, layer: str | None) -> PseudoBulks:
    bulks = pseudobulk(train, pert_col=pert_col, control=control, layer=layer)
    if len(bulks.perturbations) == 0:
        raise ValueError(
            f"the training AnnData has no perturbed cells (only {pert_col}=={control!r})."
        )
    return bulks


def _result(perts, deltas, bulks: PseudoBulks, **params) -> PredictedDeltas:
    deltas = np.asarray(deltas, dtype=np.float64).reshape(len(perts), len(bulks.genes))
    return PredictedDeltas(np.asarray(perts, dtype=object), deltas, bulks.genes, params)


def control_baseline(
    train, perturbations: Sequence[str], *, pert_col="perturbation", control="control", layer=None
) -> PredictedDeltas:
    """Predict no change for every perturbation."""
    bulks = _train_bulks(train, pert_col, control, layer)
    return _result(perturbations, np.zeros((len(perturbations), len(bulks.genes))), bulks)


def training_mean_delta(
    train, *, pert_col="perturbation", control="control", layer=None
) -> pd.Series:
    """Mean change from control over the training perturbations (each weighs 1), by gene.

    The reference of the perturbation-specific metrics
    (:func:`~cellrlhf.reward.metrics.pearson_specific`) and the ``mean`` baseline's prediction.
    """
    bulks = _train_bulks(train, pert_col, control, layer)
    return pd.Series(bulks.deltas.mean(axis=0), index=pd.Index(bulks.genes.astype(str)))


def mean_baseline(
    train, perturbations: Sequence[str], *, pert_col="perturbation", control="control", layer=None
) -> PredictedDeltas:
    """Predict the mean training change (each training perturbation weighs the same)."""
    bulks = _train_bulks(train, pert_col, control, layer)
    mean = bulks.deltas.mean(axis=0)
    return _result(perturbations, np.tile(mean, (len(perturbations), 1)), bulks)


def additive_baseline(
    train,
    perturbations: Sequence[str],
    *,
    pert_col="perturbation",
    control="control",
    layer=None,
    sep: str = "+",
) -> PredictedDeltas:
    """Sum of the single-target training changes, for combinations whose singles were trained."""
    bulks = _train_bulks(train, pert_col, control, layer)
    singles = {
        next(iter(_targets(p, sep))): d
        for p, d in zip(bulks.perturbations, bulks.deltas, strict=True)
        if len(_targets(p, sep)) == 1
    }
    perts, rows, skipped = [], [], []
    for p in perturbations:
        targets = _targets(p, sep)
        if len(targets) > 1 and all(t in singles for t in targets):
            perts.append(p)
            rows.append(np.sum([singles[t] for t in sorted(targets)], axis=0))
        else:
            skipped.append(p)
    if skipped:
        logger.info(
            "additive baseline: %d perturbation(s) are not combinations of trained singles "
            "and are not predicted.",
            len(skipped),
        )
    return _result(perts, np.asarray(rows).reshape(len(perts), len(bulks.genes)), bulks)


def _target_features(
    perts: Sequence[str], vocabulary: list[str], features: Mapping[str, np.ndarray] | None, sep
) -> np.ndarray:
    if features is None:
        index = {t: i for i, t in enumerate(vocabulary)}
        F = np.zeros((len(perts), len(vocabulary)))
        for i, p in enumerate(perts):
            for t in _targets(p, sep):
                if t in index:
                    F[i, index[t]] += 1.0
        return F
    upper = {str(k).upper(): np.asarray(v, dtype=np.float64) for k, v in features.items()}
    dim = len(next(iter(upper.values())))
    F = np.zeros((len(perts), dim))
    for i, p in enumerate(perts):
        for t in _targets(p, sep):
            if t in upper:
                F[i] += upper[t]
    return F


def ridge_baseline(
    train,
    perturbations: Sequence[str],
    *,
    pert_col="perturbation",
    control="control",
    layer=None,
    alphas: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0),
    target_features: Mapping[str, np.ndarray] | None = None,
    sep: str = "+",
) -> PredictedDeltas:
    """Ridge regression of the change on perturbation features.

    Features are one-hot per target seen in training (a combination sums its targets), or
    ``target_features[target]`` vectors (e.g. gene embeddings) summed over targets. The
    intercept is not penalized, so it takes up the response shared by all perturbations; an
    unseen target has all-zero features and gets that intercept. The penalty is the one of
    ``alphas`` with the lowest leave-one-out error over training perturbations.
    """
    bulks = _train_bulks(train, pert_col, control, layer)
    train_perts = list(bulks.perturbations)
    vocabulary = sorted({t for p in train_perts for t in _targets(p, sep)})
    F = _target_features(train_perts, vocabulary, target_features, sep)
    Y = bulks.deltas
    f_mean, y_mean = F.mean(axis=0), Y.mean(axis=0)
    Fc, Yc = F - f_mean, Y - y_mean
    best = None
    for alpha in alphas:
        if alpha <= 0:
            raise ValueError(f"ridge penalties must be > 0; got {alpha}.")
        gram = Fc @ Fc.T
        # hat matrix of ridge in dual form: H = K (K + alpha I)^-1
        H = gram @ np.linalg.inv(gram + alpha * np.eye(len(train_perts)))
        resid = (Yc - H @ Yc) / np.maximum(1.0 - np.diag(H) - 1.0 / len(train_perts), 1e-6)[:, None]
        loo = float(np.mean(resid**2))
        if best is None or loo < best[0]:
            best = (loo, alpha)
    alpha = best[1]
    W = np.linalg.solve(Fc.T @ Fc + alpha * np.eye(F.shape[1]), Fc.T @ Yc)
    F_test = _target_features(list(perturbations), vocabulary, target_features, sep)
    pred = (F_test - f_mean) @ W + y_mean
    return _result(perturbations, pred, bulks, alpha=alpha, loo_mse=best[0])


def nearest_baseline(
    train,
    perturbations: Sequence[str],
    *,
    pert_col="perturbation",
    control="control",
    layer=None,
    sep: str = "+",
) -> PredictedDeltas:
    """The change of the training perturbation(s) sharing most targets (Jaccard), else the mean.

    A perturbation seen in training is its own nearest neighbour. Ties are averaged.
    """
    bulks = _train_bulks(train, pert_col, control, layer)
    train_targets = [_targets(p, sep) for p in bulks.perturbations]
    mean = bulks.deltas.mean(axis=0)
    rows, n_fallback = [], 0
    for p in perturbations:
        targets = _targets(p, sep)
        scores = np.asarray(
            [len(targets & t) / max(len(targets | t), 1) for t in train_targets], dtype=float
        )
        if scores.max(initial=0.0) <= 0:
            rows.append(mean)
            n_fallback += 1
        else:
            rows.append(bulks.deltas[scores == scores.max()].mean(axis=0))
    return _result(perturbations, np.asarray(rows), bulks, n_mean_fallback=n_fallback)


_BASELINE_FUNCTIONS = {
    "control": control_baseline,
    "mean": mean_baseline,
    "additive": additive_baseline,
    "ridge": ridge_baseline,
    "nearest": nearest_baseline,
}


def predict_baselines(
    train,
    perturbations: Sequence[str],
    *,
    pert_col: str = "perturbation",
    control: str = "control",
    layer: str | None = None,
    methods: Sequence[str] = BASELINES,
) -> dict[str, PredictedDeltas]:
    """Every requested baseline's predicted changes for ``perturbations``."""
    unknown = [m for m in methods if m not in _BASELINE_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {BASELINES}.")
    return {
        m: _BASELINE_FUNCTIONS[m](
            train, perturbations, pert_col=pert_col, control=control, layer=layer
        )
        for m in methods
    }


def prediction_adata(
    predicted: PredictedDeltas,
    control_cells,
    *,
    pert_col: str = "perturbation",
    control: str = "control",
    layer: str | None = None,
):
    """Prediction AnnData: one row per perturbation (control mean + delta) plus control cells.

    Parameters
    ----------
    predicted
        Predicted changes (genes in ``predicted.genes``).
    control_cells
        AnnData whose cells labelled ``control`` are the control of the evaluation (usually the
        real test AnnData); its genes must include ``predicted.genes``.
    """
    import anndata as ad

    ctrl = control_cells[control_cells.obs[pert_col].astype(str).to_numpy() == control]
    if ctrl.n_obs == 0:
        raise ValueError(f"no control cells ({pert_col}=={control!r}) to build the prediction on.")
    names = pd.Index(ctrl.var_names.astype(str))
    missing = [g for g in predicted.genes if str(g) not in names]
    if missing:
        raise ValueError(
            f"{len(missing)} predicted gene(s) not in the control cells: {missing[:5]}."
        )
    cols = names.get_indexer([str(g) for g in predicted.genes])
    Xc = ctrl.X if layer is None else ctrl.layers[layer]
    Xc = Xc[:, cols]
    Xc = Xc.toarray() if sp.issparse(Xc) else np.asarray(Xc)
    values = np.maximum(Xc.mean(axis=0)[None, :] + predicted.deltas, 0.0)
    X = np.vstack([values, Xc]).astype(np.float32)
    labels = [*map(str, predicted.perturbations), *[control] * Xc.shape[0]]
    obs = pd.DataFrame(
        {pert_col: labels},
        index=[f"pred_{i}" for i in range(len(predicted.perturbations))]
        + [f"ctrl_{n}" for n in ctrl.obs_names],
    )
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[str(g) for g in predicted.genes]))


def split_half(real, *, pert_col: str = "perturbation", seed: int = 0):
    """Two disjoint halves of every group of cells (``floor(n/2)`` each, control included).

    Returns
    -------
    (half_a, half_b)
        AnnData views-made-copies; use ``half_a`` as the prediction and ``half_b`` as the
        truth. Groups with fewer than 2 cells are dropped (logged).
    """
    rng = np.random.default_rng(seed)
    labels = real.obs[pert_col].astype(str).to_numpy()
    a_idx, b_idx, dropped = [], [], []
    for label in pd.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        half = idx.size // 2
        if half < 1:
            dropped.append(label)
            continue
        a_idx.append(idx[:half])
        b_idx.append(idx[half : 2 * half])
    if dropped:
        logger.warning(
            "split_half: %d group(s) with < 2 cells dropped: %s", len(dropped), dropped[:5]
        )
    return real[np.concatenate(a_idx)].copy(), real[np.concatenate(b_idx)].copy()


def representation_ceiling(
    real,
    decoder,
    *,
    pert_col: str = "perturbation",
    layer: str | None = None,
    gene_symbols: str | None = None,
    duplicates: str = "error",
    top_k: int | None = None,
    seed: int = 0,
):
    """Real cells through encode -> decode: the best any sentence model can do.

    Parameters
    ----------
    real
        Real cells (control included), the genes the decoder's vocabulary was built from.
    decoder
        The :class:`~cellrlhf.cell2text.decoder.ExpressionDecoder` (fitted on training cells).
    layer, gene_symbols, duplicates, top_k, seed
        Passed to :func:`~cellrlhf.cell2text.encode.encode`, as when the data set was written.

    Returns
    -------
    AnnData of decoded cells (vocabulary genes as ``var_names``), ``obs[pert_col]`` copied:
    evaluate it against ``real``; its control rows are the decoded control.
    """
    import anndata as ad

    from cellrlhf.cell2text.encode import encode

    encoded = encode(
        real,
        layer=layer,
        top_k=top_k,
        gene_symbols=gene_symbols,
        duplicates=duplicates,
        key_added="cell_sentence",
        seed=seed,
        copy=True,
    )
    X, report = decoder.decode(encoded.obs["cell_sentence"].tolist())
    if report.unknown_fraction > 0:
        logger.warning(
            "representation ceiling: %.1f%% of sentence words are not in the decoder's "
            "vocabulary; was the decoder fitted on these genes?",
            100 * report.unknown_fraction,
        )
    obs = pd.DataFrame({pert_col: real.obs[pert_col].astype(str).to_numpy()}, index=real.obs_names)
    return ad.AnnData(
        X=sp.csr_matrix(X, dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(index=list(decoder.vocab.genes)),
    )
