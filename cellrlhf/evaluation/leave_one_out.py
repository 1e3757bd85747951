"""Baselines and the perturbation-specific reference for perturbations that were *trained*.

Scoring a model on its own training perturbations (``cellrlhf evaluate --split train``) asks
whether it fits what it was shown. Its baselines must not be shown the answer: the ``mean`` of
the training perturbations contains the prompted one, ``nearest`` would find it, ``ridge`` would
fit it. Here each perturbation is predicted from the training cells without its own cells in the
scored cell context (its cells in other contexts stay: ``context_transfer`` learns from them as
it does on held-out pairs), and the reference of ``pearson_specific`` (the context's mean
training change) leaves it out the same way. A model that does not beat the leave-one-out
``mean`` on the perturbations it was trained on has not learned them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cellrlhf.evaluation.baselines import (
    BASELINES,
    CONTEXT_COLUMN,
    PredictedDeltas,
    cells_of_context,
    has_perturbed_cells,
    predict_baselines,
)
from cellrlhf.metrics.pseudobulk import pseudobulk

__all__ = ["without_perturbation", "leave_one_out_baselines", "leave_one_out_reference"]

logger = logging.getLogger(__name__)


def without_perturbation(
    train,
    perturbation: str,
    *,
    context: str | None = None,
    context_col: str = CONTEXT_COLUMN,
    pert_col: str = "perturbation",
):
    """``train`` without the cells of ``perturbation`` in ``context`` (in every context when
    ``context`` is ``None``)."""
    drop = train.obs[pert_col].astype(str).to_numpy() == str(perturbation)
    if context is not None:
        drop &= train.obs[context_col].astype(str).to_numpy() == str(context)
    return train[~drop]


def leave_one_out_baselines(
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
    """:func:`~cellrlhf.evaluation.baselines.predict_baselines` for each perturbation from
    ``train`` without its own cells in ``context``; one :class:`PredictedDeltas` per method
    (``params``: ``leave_one_out`` and, where a baseline records settings such as the ridge
    penalty, those of each perturbation)."""
    per = {
        p: predict_baselines(
            without_perturbation(
                train, p, context=context, context_col=context_col, pert_col=pert_col
            ),
            [p],
            pert_col=pert_col,
            control=control,
            layer=layer,
            methods=methods,
            context=context,
            context_col=context_col,
        )
        for p in perturbations
    }
    genes = np.asarray(train.var_names, dtype=object)
    out: dict[str, PredictedDeltas] = {}
    for method in methods:
        parts = [per[p][method] for p in perturbations]
        done = [part for part in parts if len(part.perturbations)]
        params: dict = {"leave_one_out": True}
        if any(part.params for part in parts):
            params["per_perturbation"] = {p: per[p][method].params for p in perturbations}
        out[method] = PredictedDeltas(
            np.asarray([label for part in done for label in part.perturbations], dtype=object),
            np.vstack([part.deltas for part in done]) if done else np.zeros((0, len(genes))),
            done[0].genes if done else genes,
            params,
            tuple(label for part in parts for label in part.not_applicable),
        )
    return out


def leave_one_out_reference(
    train,
    perturbations: Sequence[str],
    *,
    pert_col: str = "perturbation",
    control: str = "control",
    layer: str | None = None,
    context: str | None = None,
    context_col: str = CONTEXT_COLUMN,
) -> pd.DataFrame | None:
    """The mean training change of ``context`` without each perturbation: one row per
    perturbation (index), one column per gene; the ``reference_delta`` of
    :func:`~cellrlhf.evaluation.scoring.evaluate_predictions` for trained perturbations.
    Derived from one pseudo-bulk (the mean of the others is the sum less its own change over
    ``n - 1``). ``None`` (logged) where some perturbation is the context's only trained one."""
    in_context = cells_of_context(train, context, context_col)
    if not perturbations or not has_perturbed_cells(in_context, pert_col=pert_col, control=control):
        return None
    bulks = pseudobulk(in_context, pert_col=pert_col, control=control, layer=layer)
    deltas, n = bulks.deltas, len(bulks.perturbations)
    row_of = {str(p): i for i, p in enumerate(bulks.perturbations)}
    total = deltas.sum(axis=0)
    rows = []
    for p in perturbations:
        i = row_of.get(str(p))
        if i is None:  # not trained here: every trained perturbation is "the others"
            rows.append(total / n)
        elif n == 1:
            logger.info(
                "context %s trained no perturbation but %s: no leave-one-out reference "
                "(pearson_specific is NaN)",
                context,
                p,
            )
            return None
        else:
            rows.append((total - deltas[i]) / (n - 1))
    return pd.DataFrame(
        np.vstack(rows),
        index=pd.Index([str(p) for p in perturbations]),
        columns=pd.Index(bulks.genes.astype(str)),
    )
