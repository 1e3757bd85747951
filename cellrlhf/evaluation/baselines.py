"""Baselines and ceilings: the MIN and MAX every perturbation result is read against.

Each baseline predicts the change from control of test perturbations from a *training*
AnnData (log-normalized, ``obs[pert_col]``, control cells labelled ``control``), and
:func:`prediction_adata` turns the predicted changes into a prediction AnnData (one pseudo-bulk
row per perturbation, on top of the control cells the evaluation uses), ready for
:func:`~cellrlhf.evaluation.scoring.evaluate_predictions`:

- ``control``: no change at all ("nothing happens"; its change metrics are undefined);
- ``mean``: the mean change over all training perturbations (each perturbation weighs 1);
- ``additive``: for a combination ``A+B`` whose singles were trained, ``delta_A + delta_B``;
- ``ridge``: ridge regression of the change on the perturbation's targets (one-hot per target
  seen in training, summed for combinations; or your own target features), penalty chosen by
  leave-one-out over the training perturbations;
- ``nearest``: the training perturbation(s) sharing most targets (mean of ties);
- ``context_transfer``: the same perturbation's mean change in the *other* cell contexts where
  it was trained (each context's own control), added to this context's control.

A baseline that cannot apply to a perturbation does not predict it: ``additive`` for anything
but a combination of trained singles, ``ridge`` and ``nearest`` for a perturbation none of whose
targets was trained (or has ``target_features``), ``context_transfer`` for a perturbation
trained in no other context. Those perturbations are listed in
:attr:`PredictedDeltas.not_applicable` (and logged), never filled in with another baseline's
answer under this one's name. Predicted pseudo-bulks (control mean + change) are clipped at 0,
as expression is.

Ceilings, from the real test cells themselves:

- :func:`split_half`: each perturbation's cells and the control cells split in two disjoint
  halves (seeded); one half predicts the other (``cell-eval``'s data ceiling, at half depth;
  :func:`~cellrlhf.evaluation.scoring.spearman_brown` maps correlations to full depth);
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
from cellrlhf.metrics.pseudobulk import PseudoBulks, pseudobulk

__all__ = [
    "BASELINES",
    "CONTEXT_COLUMN",
    "PredictedDeltas",
    "control_baseline",
    "mean_baseline",
    "training_mean_delta",
    "has_perturbed_cells",
    "additive_baseline",
    "ridge_baseline",
    "nearest_baseline",
    "context_transfer_baseline",
    "cells_of_context",
    "predict_baselines",
    "prediction_adata",
    "split_half",
    "representation_ceiling",
]

logger = logging.getLogger(__name__)

BASELINES = ("control", "mean", "additive", "ridge", "nearest", "context_transfer")
CONTEXT_COLUMN = "cell_context"


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
    not_applicable
        The requested perturbations this baseline cannot predict (not in ``perturbations``).
    """

    perturbations: np.ndarray
    deltas: np.ndarray
    genes: np.ndarray
    params: dict = field(default_factory=dict)
    not_applicable: tuple[str, ...] = ()


def _targets(perturbation: str, sep: str) -> frozenset[str]:
    return frozenset(t.upper() for t in split_perturbation(perturbation, sep=sep))


def _train_bulks(train, pert_col: str, control: str, layer: str | None) -> PseudoBulks:
    bulks = pseudobulk(train, pert_col=pert_col, control=control, layer=layer)
    if len(bulks.perturbations) == 0:
        raise ValueError(
            f"the training AnnData has no perturbed cells (only {pert_col}=={control!r})."
        )
    return bulks


def _result(perts, deltas, genes, *, not_applicable=(), name="", **params) -> PredictedDeltas:
    genes = np.asarray(genes, dtype=object)
    deltas = np.asarray(deltas, dtype=np.float64).reshape(len(perts), len(genes))
    missing = tuple(str(p) for p in not_applicable)
    if missing:
        logger.info(
            "%s baseline: not applicable to %d perturbation(s), left out: %s",
            name,
            len(missing),
            ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
        )
    return PredictedDeltas(np.asarray(perts, dtype=object), deltas, genes, params, missing)


def has_perturbed_cells(train, *, pert_col="perturbation", control="control") -> bool:
    """Whether ``train`` holds a perturbed cell (what every within-context baseline but
    ``control``, and the perturbation-specific reference, learn from)."""
    return bool((train.obs[pert_col].astype(str).to_numpy() != str(control)).any())


def control_baseline(
    train, perturbations: Sequence[str], *, pert_col="perturbation", control="control", layer=None
) -> PredictedDeltas:
    """Predict no change for every perturbation (needs no perturbed training cell)."""
    genes = np.asarray(train.var_names, dtype=object)
    return _result(perturbations, np.zeros((len(perturbations), len(genes))), genes)


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
    return _result(perturbations, np.tile(mean, (len(perturbations), 1)), bulks.genes)


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
    rows = np.asarray(rows).reshape(len(perts), len(bulks.genes))
    return _result(perts, rows, bulks.genes, not_applicable=skipped, name="additive")


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
    intercept is not penalized, so it takes up the response shared by all perturbations. A
    perturbation none of whose targets has features (no target trained, or none in
    ``target_features``) would get that intercept alone, the ``mean`` baseline: it is not
    applicable and left out. The penalty is the one of ``alphas`` with the lowest
    leave-one-out error over training perturbations.
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
    known = (
        set(vocabulary) if target_features is None else {str(k).upper() for k in target_features}
    )
    applies = [bool(_targets(p, sep) & known) for p in perturbations]
    perts = [p for p, ok in zip(perturbations, applies, strict=True) if ok]
    F_test = _target_features(perts, vocabulary, target_features, sep)
    pred = (F_test - f_mean) @ W + y_mean
    skipped = [p for p, ok in zip(perturbations, applies, strict=True) if not ok]
    return _result(
        perts, pred, bulks.genes, not_applicable=skipped, name="ridge", alpha=alpha, loo_mse=best[0]
    )


def nearest_baseline(
    train,
    perturbations: Sequence[str],
    *,
    pert_col="perturbation",
    control="control",
    layer=None,
    sep: str = "+",
) -> PredictedDeltas:
    """The change of the training perturbation(s) sharing most targets (Jaccard).

    A perturbation seen in training is its own nearest neighbour. Ties are averaged. A
    perturbation that shares no target with any training perturbation is not applicable.
    """
    bulks = _train_bulks(train, pert_col, control, layer)
    train_targets = [_targets(p, sep) for p in bulks.perturbations]
    perts, rows, skipped = [], [], []
    for p in perturbations:
        targets = _targets(p, sep)
        scores = np.asarray(
            [len(targets & t) / max(len(targets | t), 1) for t in train_targets], dtype=float
        )
        if scores.max(initial=0.0) <= 0:
            skipped.append(p)
        else:
            perts.append(p)
            rows.append(bulks.deltas[scores == scores.max()].mean(axis=0))
    rows = np.asarray(rows).reshape(len(perts), len(bulks.genes))
    return _result(perts, rows, bulks.genes, not_applicable=skipped, name="nearest")


def context_transfer_baseline(
    train,
    perturbations: Sequence[str],
    *,
    context: str,
    context_col: str = CONTEXT_COLUMN,
    pert_col="perturbation",
    control="control",
    layer=None,
) -> PredictedDeltas:
    """The same perturbation's mean change in the other cell contexts where it was trained.

    Parameters
    ----------
    train
        Training cells of *every* cell context, ``obs[context_col]`` naming each cell's.
    perturbations
        Perturbations to predict in ``context``.
    context
        The context predicted; its own cells are not used.
    context_col
        The ``obs`` column of cell contexts.

    In each other context with control cells, the change of ``p`` is its pseudo-bulk minus that
    context's control; the prediction is the mean over those contexts (each weighs 1), to be
    added to ``context``'s control. A perturbation trained in no other context is not
    applicable.
    """
    if context_col not in train.obs.columns:
        raise KeyError(
            f"context_transfer needs the cell context of each training cell: {context_col!r} is "
            f"not a column of the training AnnData's obs ({list(train.obs.columns)})."
        )
    contexts = train.obs[context_col].astype(str).to_numpy()
    labels = train.obs[pert_col].astype(str).to_numpy()
    changes: dict[str, list[np.ndarray]] = {}
    used = []
    for other in pd.unique(contexts):
        in_other = contexts == other
        if other == str(context) or not np.any(in_other & (labels == control)):
            continue
        bulks = pseudobulk(train[in_other], pert_col=pert_col, control=control, layer=layer)
        used.append(str(other))
        for p, delta in zip(bulks.perturbations, bulks.deltas, strict=True):
            changes.setdefault(str(p), []).append(delta)
    perts = [p for p in perturbations if str(p) in changes]
    skipped = [p for p in perturbations if str(p) not in changes]
    rows = np.asarray([np.mean(changes[str(p)], axis=0) for p in perts])
    genes = np.asarray(train.var_names, dtype=object)
    return _result(
        perts,
        rows.reshape(len(perts), len(genes)),
        genes,
        not_applicable=skipped,
        name="context_transfer",
        source_contexts=used,
        n_source_contexts=[len(changes[str(p)]) for p in perts],
    )


_BASELINE_FUNCTIONS = {
    "control": control_baseline,
    "mean": mean_baseline,
    "additive": additive_baseline,
    "ridge": ridge_baseline,
    "nearest": nearest_baseline,
}
_ACROSS_CONTEXTS = {"context_transfer": context_transfer_baseline}


def cells_of_context(train, context: str | None, context_col: str = "cell_context"):
    """The cells of ``train`` in ``context`` (all of them when ``context`` is ``None``)."""
    if context is None:
        return train
    if context_col not in train.obs.columns:
        raise KeyError(
            f"context={context!r} but {context_col!r} is not a column of the training "
            f"AnnData's obs ({list(train.obs.columns)}); pass context_col=."
        )
    return train[train.obs[context_col].astype(str).to_numpy() == str(context)]


def predict_baselines(
    train,
    perturbations: Sequence[str],
    *,
    pert_col: str = "perturbation",
    control: str = "control",
    layer: str | None = None,
    methods: Sequence[str] = BASELINES,
    context: str | None = None,
    context_col: str = CONTEXT_COLUMN,
) -> dict[str, PredictedDeltas]:
    """Every requested baseline's predicted changes for ``perturbations``.

    Parameters
    ----------
    train
        Training cells. With ``context``: the cells of every context (``obs[context_col]``);
        the within-context baselines learn from ``context``'s cells, ``context_transfer`` from
        the others'. Without: one context's cells, and ``context_transfer`` applies to nothing.
    """
    unknown = [m for m in methods if m not in _BASELINE_FUNCTIONS and m not in _ACROSS_CONTEXTS]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {BASELINES}.")
    in_context = cells_of_context(train, context, context_col)
    learnable = has_perturbed_cells(in_context, pert_col=pert_col, control=control)
    out = {}
    for m in methods:
        if m in _ACROSS_CONTEXTS and context is None:
            genes = np.asarray(train.var_names, dtype=object)
            out[m] = _result(
                [], np.zeros((0, len(genes))), genes, not_applicable=perturbations, name=m
            )
        elif m in _ACROSS_CONTEXTS:
            out[m] = _ACROSS_CONTEXTS[m](
                train,
                perturbations,
                context=context,
                context_col=context_col,
                pert_col=pert_col,
                control=control,
                layer=layer,
            )
        elif m != "control" and not learnable:
            # e.g. one drug held out in this context: its training cells are all controls
            genes = np.asarray(train.var_names, dtype=object)
            out[m] = _result(
                [], np.zeros((0, len(genes))), genes, not_applicable=perturbations, name=m
            )
        else:
            out[m] = _BASELINE_FUNCTIONS[m](
                in_context, perturbations, pert_col=pert_col, control=control, layer=layer
            )
    return out


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
    # the control mean in float64, as the evaluation takes it: a zero change stays zero after
    # the float32 cast (a float32 mean of many cells is off by more than rounding)
    values = np.maximum(Xc.astype(np.float64).mean(axis=0)[None, :] + predicted.deltas, 0.0)
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
        Passed to :func:`~cellrlhf.cell2text.encoding.encode`, as when the data set was written.

    Returns
    -------
    AnnData of decoded cells (vocabulary genes as ``var_names``), ``obs[pert_col]`` copied:
    evaluate it against ``real``; its control rows are the decoded control.
    """
    import anndata as ad

    from cellrlhf.cell2text.encoding import encode

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
