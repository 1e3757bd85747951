"""Model predictions, baselines and ceilings evaluated on the same real cells, in one call.

evaluations = compare_methods(
    test,                                    # real test cells of one context, control included
    predictions={"my_model": pred_adata},
    train=train,                             # baselines learn from it
    context="K562",                          # optional: train holds every context's cells
    decoders={"global": decoder},            # representation ceiling per decoder
)
write_report(evaluations, "report/", spearman_brown_from="split_half")

A baseline that does not apply to some test perturbations (see
:mod:`cellrlhf.evaluation.baselines`) is scored on the others and lists the rest in
:attr:`~cellrlhf.evaluation.scoring.Evaluation.not_applicable`; one that applies to none is an
evaluation with no rows and all of them listed there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from cellrlhf.evaluation.baselines import (
    BASELINES,
    CONTEXT_COLUMN,
    PredictedDeltas,
    cells_of_context,
    has_perturbed_cells,
    predict_baselines,
    prediction_adata,
    representation_ceiling,
    split_half,
    training_mean_delta,
)
from cellrlhf.evaluation.leave_one_out import leave_one_out_baselines, leave_one_out_reference
from cellrlhf.evaluation.scoring import Evaluation, evaluate_predictions, perturbation_kinds

__all__ = ["SPLIT_HALF", "compare_methods"]

logger = logging.getLogger(__name__)

SPLIT_HALF = "split_half"


def compare_methods(
    real,
    *,
    predictions: Mapping[str, object] | None = None,
    train=None,
    context: str | None = None,
    context_col: str = CONTEXT_COLUMN,
    baselines: Sequence[str] = BASELINES,
    split_half_ceiling: bool = True,
    decoders: Mapping[str, object] | None = None,
    pert_col: str = "perturbation",
    control: str = "control",
    layer: str | None = None,
    seed: int = 0,
    encode_kwargs: Mapping[str, object] | None = None,
    leave_one_out: bool = False,
    **evaluate_kwargs,
) -> dict[str, Evaluation]:
    """Evaluate predictions, baselines and ceilings against ``real``.

    Parameters
    ----------
    real
        Real test cells (log-normalized), control cells included.
    predictions
        Method name -> prediction AnnData (see :func:`evaluate_predictions`).
    train
        Training cells for the baselines and for the reference of the perturbation-specific
        metrics (their mean training change); ``None``: no baselines, and ``pearson_specific``
        is NaN. With ``context``, the training cells of every cell context.
    context, context_col
        The cell context of ``real`` and the ``obs`` column of ``train`` naming each cell's
        context. The within-context baselines and the reference learn from the training cells
        of ``context``; ``context_transfer`` from those of the other contexts. ``None``:
        ``train`` is one context's cells and ``context_transfer`` applies to nothing.
    baselines
        Which baselines (:data:`~cellrlhf.evaluation.baselines.BASELINES`).
    split_half_ceiling
        Add the split-half real-vs-real ceiling (method ``"split_half"``).
    decoders
        Name -> :class:`~cellrlhf.cell2text.decoder.ExpressionDecoder`: a representation
        ceiling ``"representation_<name>"`` per decoder.
    pert_col, control, layer
        Perturbation column, control label and expression layer of ``real`` / ``train``.
    seed
        Seed of the split-half ceiling.
    encode_kwargs
        Passed to ``encode`` for the representation ceiling (``gene_symbols``, ``top_k``...).
    leave_one_out
        ``real``'s perturbations were trained (a fit check on training cells): each baseline
        predicts each perturbation, and the perturbation-specific reference is taken, from
        ``train`` without that perturbation's cells in ``context``
        (:mod:`cellrlhf.evaluation.leave_one_out`).
    **evaluate_kwargs
        Passed to :func:`evaluate_predictions` (``top_k``, ``de``, ``distances``...).
    """
    kwargs = dict(pert_col=pert_col, control=control, **evaluate_kwargs)
    where = dict(context=context, context_col=context_col, pert_col=pert_col, control=control)
    perturbations = _perturbations(real, pert_col, control)
    if train is not None:
        in_context = cells_of_context(train, context, context_col)
        # the reference of the perturbation-specific metrics, the same for every method; none
        # (NaN metrics) where the context trained no perturbation
        if leave_one_out:
            kwargs["reference_delta"] = leave_one_out_reference(
                train, perturbations, layer=layer, **where
            )
        elif has_perturbed_cells(in_context, pert_col=pert_col, control=control):
            kwargs["reference_delta"] = training_mean_delta(
                in_context, pert_col=pert_col, control=control, layer=layer
            )
        else:
            logger.info(
                "context %s trained no perturbation: no perturbation-specific reference there "
                "(pearson_specific is NaN)",
                context,
            )
    results: dict[str, Evaluation] = {}
    for name, pred in (predictions or {}).items():
        logger.info("evaluating %s", name)
        results[name] = evaluate_predictions(pred, real, real_layer=layer, **kwargs)
    if train is not None and baselines:
        predict = leave_one_out_baselines if leave_one_out else predict_baselines
        predicted = predict(train, perturbations, methods=baselines, layer=layer, **where)
        results.update(_baseline_evaluations(real, predicted, layer, kwargs))
    if split_half_ceiling:
        half_a, half_b = split_half(real, pert_col=pert_col, seed=seed)
        results[SPLIT_HALF] = evaluate_predictions(
            half_a,
            half_b,
            pred_layer=layer,
            real_layer=layer,
            reference_control=_control_mean(real, pert_col, control, layer),
            **kwargs,
        )
    for name, decoder in (decoders or {}).items():
        decoded = representation_ceiling(
            real, decoder, pert_col=pert_col, layer=layer, **dict(encode_kwargs or {})
        )
        results[f"representation_{name}"] = evaluate_predictions(
            decoded, real, real_layer=layer, **kwargs
        )
    if not results:
        raise ValueError("nothing to evaluate: pass predictions, train= (baselines) or ceilings.")
    return results


def _perturbations(real, pert_col: str, control: str) -> list[str]:
    labels = real.obs[pert_col].astype(str).to_numpy()
    return [p for p in dict.fromkeys(labels) if p != control]


def _baseline_evaluations(real, predicted: Mapping[str, PredictedDeltas], layer, kwargs) -> dict:
    """Each baseline's predicted changes scored on ``real``'s perturbations, with those it does
    not apply to listed in ``not_applicable`` (``kwargs``: those of
    :func:`evaluate_predictions`, ``pert_col`` and ``control`` included)."""
    pert_col, control = kwargs["pert_col"], kwargs["control"]
    results: dict[str, Evaluation] = {}
    for name, deltas in predicted.items():
        missing = pd.DataFrame(
            {
                "perturbation": list(deltas.not_applicable),
                "kind": perturbation_kinds(
                    real, deltas.not_applicable, pert_col=pert_col, kind_col=kwargs.get("kind_col")
                ),
            },
            dtype=object,
        )
        if len(deltas.perturbations) == 0:
            logger.info("baseline %s applies to none of the test perturbations", name)
            results[name] = _nothing_predicted(deltas, missing)
            continue
        pred = prediction_adata(deltas, real, pert_col=pert_col, control=control, layer=layer)
        evaluation = evaluate_predictions(pred, real, real_layer=layer, **kwargs)
        results[name] = replace(evaluation, not_applicable=missing)
    return results


def _nothing_predicted(deltas: PredictedDeltas, missing: pd.DataFrame) -> Evaluation:
    """The evaluation of a baseline that applies to none of the test perturbations."""
    columns = ["perturbation", "kind", "n_pred", "n_real"]
    empty = np.zeros((0, len(deltas.genes)))
    return Evaluation(
        per_perturbation=pd.DataFrame({c: [] for c in columns}),
        params={"not_applicable": "applies to none of the test perturbations", **deltas.params},
        pred_delta=empty,
        real_delta=empty,
        genes=np.asarray(deltas.genes, dtype=object),
        not_applicable=missing,
    )


def _control_mean(real, pert_col: str, control: str, layer: str | None) -> pd.Series:
    """Mean expression of ``real``'s control cells, by gene."""
    ctrl = real[real.obs[pert_col].astype(str).to_numpy() == control]
    X = ctrl.X if layer is None else ctrl.layers[layer]
    mean = np.asarray(X.mean(axis=0, dtype=np.float64)).ravel()
    return pd.Series(mean, index=pd.Index(real.var_names.astype(str)))
