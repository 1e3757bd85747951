"""Model predictions, baselines and ceilings evaluated on the same real cells, in one call.

evaluations = compare_methods(
    test,                                    # real test cells, control included
    predictions={"my_model": pred_adata},
    train=train,                             # baselines learn from it
    decoders={"global": decoder},            # representation ceiling per decoder
)
write_report(evaluations, "report/", spearman_brown_from="split_half")
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from cellrlhf.reward.baselines import (
    BASELINES,
    predict_baselines,
    prediction_adata,
    representation_ceiling,
    split_half,
    training_mean_delta,
)
from cellrlhf.reward.evaluate import Evaluation, evaluate_predictions

__all__ = ["SPLIT_HALF", "compare_methods"]

logger = logging.getLogger(__name__)

SPLIT_HALF = "split_half"


def compare_methods(
    real,
    *,
    predictions: Mapping[str, object] | None = None,
    train=None,
    baselines: Sequence[str] = BASELINES,
    split_half_ceiling: bool = True,
    decoders: Mapping[str, object] | None = None,
    pert_col: str = "perturbation",
    control: str = "control",
    layer: str | None = None,
    seed: int = 0,
    encode_kwargs: Mapping[str, object] | None = None,
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
        is NaN.
    baselines
        Which baselines (:data:`~cellrlhf.reward.baselines.BASELINES`).
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
    **evaluate_kwargs
        Passed to :func:`evaluate_predictions` (``top_k``, ``de``, ``distances``...).
    """
    kwargs = dict(pert_col=pert_col, control=control, **evaluate_kwargs)
    if train is not None:
        # the reference of the perturbation-specific metrics, the same for every method
        kwargs["reference_delta"] = training_mean_delta(
            train, pert_col=pert_col, control=control, layer=layer
        )
    labels = real.obs[pert_col].astype(str).to_numpy()
    perturbations = [p for p in dict.fromkeys(labels) if p != control]
    results: dict[str, Evaluation] = {}
    for name, pred in (predictions or {}).items():
        logger.info("evaluating %s", name)
        results[name] = evaluate_predictions(pred, real, real_layer=layer, **kwargs)
    if train is not None and baselines:
        predicted = predict_baselines(
            train,
            perturbations,
            pert_col=pert_col,
            control=control,
            layer=layer,
            methods=baselines,
        )
        for name, deltas in predicted.items():
            if len(deltas.perturbations) == 0:
                logger.info("baseline %s predicts none of the test perturbations; skipped", name)
                continue
            pred = prediction_adata(deltas, real, pert_col=pert_col, control=control, layer=layer)
            results[name] = evaluate_predictions(pred, real, real_layer=layer, **kwargs)
    if split_half_ceiling:
        half_a, half_b = split_half(real, pert_col=pert_col, seed=seed)
        results[SPLIT_HALF] = evaluate_predictions(
            half_a, half_b, pred_layer=layer, real_layer=layer, **kwargs
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
