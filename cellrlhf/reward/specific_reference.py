"""The mean training change of each cell context: the reference of the perturbation-specific
reward term (:class:`~cellrlhf.reward.fidelity_reward.GroupFidelityReward`, ``specific``).

The data stage's ``rl/train`` split holds, for every training (perturbation, cell context)
group, the real pseudo-bulk (``reference_perturbed``) and its control's (``reference_control``),
in the decoder's vocabulary order. The reference of a context is the mean over its training
perturbations (each weighs 1, whatever its number of prompts) of ``perturbed - control``: what
the ``mean`` baseline predicts there (:func:`cellrlhf.evaluation.baselines.training_mean_delta`,
on the groups that became RL prompts).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

__all__ = [
    "CONTEXT_COLUMN",
    "REFERENCE_ROW_COLUMNS",
    "context_mean_deltas",
    "context_mean_deltas_if_present",
    "checked_context_means",
    "context_rows",
    "with_specific_term",
]

logger = logging.getLogger(__name__)

CONTEXT_COLUMN = "cell_context"
REFERENCE_ROW_COLUMNS = (
    "perturbation",
    "cell_context",
    "reference_perturbed",
    "reference_control",
)


def _column(rows, name: str) -> list:
    try:
        return list(rows[name])
    except KeyError:
        raise KeyError(
            f"the training rows have no {name!r} column; pass the data stage's rl/train split "
            f"(columns {REFERENCE_ROW_COLUMNS})."
        ) from None


def context_mean_deltas(rows) -> dict[str, np.ndarray]:
    """Mean ``reference_perturbed - reference_control`` over the perturbations of each context.

    Parameters
    ----------
    rows
        The training rows: a :class:`datasets.Dataset` (the ``rl/train`` split) or a mapping of
        column name -> list, with the columns of :data:`REFERENCE_ROW_COLUMNS`. Rows of the
        same (context, perturbation) count once.

    Returns
    -------
    Cell context -> ``(n_genes,)`` float64 mean change.
    """
    contexts = [str(c) for c in _column(rows, "cell_context")]
    perturbations = [str(p) for p in _column(rows, "perturbation")]
    first: dict[tuple[str, str], int] = {}
    for i, key in enumerate(zip(contexts, perturbations, strict=True)):
        first.setdefault(key, i)
    if not first:
        raise ValueError("no training rows: the mean training change needs at least one.")
    index = list(first.values())
    if hasattr(rows, "select"):  # a datasets.Dataset: read only the rows needed
        picked = rows.select(index)
        perturbed, control = picked["reference_perturbed"], picked["reference_control"]
    else:
        perturbed = [_column(rows, "reference_perturbed")[i] for i in index]
        control = [_column(rows, "reference_control")[i] for i in index]
    deltas = np.asarray(perturbed, dtype=np.float64) - np.asarray(control, dtype=np.float64)
    keys = list(first)
    out = {}
    for ctx in dict.fromkeys(c for c, _ in keys):
        mask = np.asarray([c == ctx for c, _ in keys])
        out[ctx] = deltas[mask].mean(axis=0)
    return out


def context_mean_deltas_if_present(rows) -> dict[str, np.ndarray] | None:
    """:func:`context_mean_deltas` of ``rows``, or ``None`` when there are no rows or they lack
    the columns (logged): for callers whose specific term is optional."""
    if rows is None or len(rows) == 0:
        return None
    try:
        return context_mean_deltas(rows)
    except KeyError as err:
        logger.warning("no mean training change per context (no pearson_specific): %s", err)
        return None


def with_specific_term(fidelity_kwargs: Mapping | None, specific_weight: float, train_rows) -> dict:
    """Keyword arguments of :class:`~cellrlhf.reward.fidelity_reward.GroupFidelityReward` with
    the perturbation-specific term weighted ``specific_weight`` (0: unchanged).

    ``train_rows`` (the ``rl/train`` split) gives each context's reference
    (:func:`context_mean_deltas`); it is only read when the weight is positive.
    """
    kwargs = dict(fidelity_kwargs or {})
    if not specific_weight:
        return kwargs
    from dataclasses import asdict, is_dataclass

    weights = kwargs.get("weights") or {}
    weights = asdict(weights) if is_dataclass(weights) else dict(weights)
    weights["specific"] = float(specific_weight)
    kwargs["weights"] = weights
    if train_rows is None:
        raise ValueError(
            "specific_weight > 0 needs the training rows (the rl/train split) to compute each "
            "cell context's mean training change."
        )
    kwargs["train_mean_deltas"] = context_mean_deltas(train_rows)
    logger.info(
        "fidelity reward: perturbation-specific term x%.3g against the mean training change of "
        "%d cell context(s)",
        specific_weight,
        len(kwargs["train_mean_deltas"]),
    )
    return kwargs


def checked_context_means(
    means: Mapping | None, n_genes: int, *, required: bool
) -> dict[str, np.ndarray] | None:
    """``means`` as context -> float64 vector of ``n_genes`` finite values (``None`` stays
    ``None`` unless ``required``, which raises naming the fix)."""
    if means is None:
        if required:
            raise ValueError(
                "weights.specific > 0 needs train_mean_deltas (cell context -> mean training "
                "change): context_mean_deltas(<rl/train split>) from "
                "cellrlhf.reward.specific_reference."
            )
        return None
    out = {str(k): np.asarray(v, dtype=np.float64) for k, v in dict(means).items()}
    for ctx, value in out.items():
        if value.shape != (n_genes,) or not np.all(np.isfinite(value)):
            raise ValueError(
                f"train_mean_deltas[{ctx!r}] must be {n_genes} finite numbers (the decoder's "
                f"vocabulary); got shape {value.shape}."
            )
    return out


def context_rows(means: Mapping[str, np.ndarray], cell_context, first: np.ndarray) -> np.ndarray:
    """``(len(first), n_genes)``: the mean training change of the context of each row ``first``."""
    if cell_context is None:
        raise KeyError(
            f"the specific term needs the dataset column {CONTEXT_COLUMN!r} (the rl/ split has it)."
        )
    contexts = [str(cell_context[i]) for i in first]
    unknown = sorted(set(contexts) - set(means))
    if unknown:
        raise ValueError(
            f"no mean training change for cell context(s) {unknown} (train_mean_deltas has "
            f"{sorted(means)}); compute it from the rl/train split of this data set."
        )
    return np.stack([means[c] for c in contexts])
