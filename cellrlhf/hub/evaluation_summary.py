"""The key metrics of a ``cellrlhf evaluate`` output directory, for the model card.

The directory (opened with :func:`~cellrlhf.evaluation.eval_dir.open_evaluation_dir`; its
``summary.csv`` and ``manifest.json``) is read as one evaluation: the key metrics
(pearson_delta and friends, :data:`~cellrlhf.evaluation.eval_report.KEY_METRICS`) of the model's row
over all cell contexts, one per held-out kind (``all``, ``single``, ``combo``), named
``"<metric>/<kind>"``. The result is an :class:`~cellrlhf.sft.eval_results.EvalSummary`, which
the card builder (:mod:`cellrlhf.sft.model_card`) takes like any evaluation file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from cellrlhf.evaluation.eval_dir import (
    SUMMARY_FILENAME,
    EvaluationDir,
    is_evaluation_dir,
    open_evaluation_dir,
)
from cellrlhf.evaluation.model_dirs import LAST_SUFFIX, is_grammar_row
from cellrlhf.sft.eval_results import EvalSummary

__all__ = ["evaluation_dir_summary", "read_evaluation_dirs"]


def _evaluated_model(evaluation: EvaluationDir, model_dir: Path | None) -> str:
    """The row of ``model_dir``: the one named for it, not the rows the evaluation added for the
    same directory (``<name>_grammar``: sampled otherwise; ``<name>_last``: the kept policy
    standing for the last one)."""
    models = evaluation.models
    if model_dir is not None:
        mine = [
            name
            for name, record in models.items()
            if record.get("dir") and Path(record["dir"]).resolve() == Path(model_dir).resolve()
        ]
        named = [n for n in mine if not (is_grammar_row(n) or n.endswith(LAST_SUFFIX))] or mine
        if len(named) == 1:
            return named[0]
    if len(models) == 1:
        return next(iter(models))
    raise ValueError(
        f"the evaluation in {evaluation.path} scored models {sorted(models)}, none of them saved in "
        f"{model_dir}; pass the evaluation of this model."
    )


def evaluation_dir_summary(path: str | Path, model_dir: str | Path | None = None) -> EvalSummary:
    """The key metrics of one model in a ``cellrlhf evaluate`` output directory.

    Parameters
    ----------
    path
        The evaluation directory.
    model_dir
        The model whose row is read (matched by directory); optional when one model was scored.
    """
    from fnmatch import fnmatch

    import pandas as pd

    from cellrlhf.evaluation.eval_report import KEY_METRICS
    from cellrlhf.evaluation.evaluate import ALL_CONTEXTS

    evaluation = open_evaluation_dir(path)
    model = _evaluated_model(evaluation, Path(model_dir) if model_dir else None)
    summary = evaluation.summary
    rows = summary[(summary["method"] == model) & (summary["cell_context"] == ALL_CONTEXTS)]
    columns = [c for c in summary.columns if any(fnmatch(c, p) for p in KEY_METRICS)]
    metrics = {
        f"{column}/{row['kind']}": float(row[column])
        for _, row in rows.iterrows()
        for column in columns
        if pd.notna(row[column]) and math.isfinite(float(row[column]))
    }
    dataset = evaluation.dataset
    started = evaluation.manifest.get("started")
    return EvalSummary(
        metrics=metrics,
        source=evaluation.path / SUMMARY_FILENAME,
        dataset=dataset.get("name") if isinstance(dataset.get("name"), str) else None,
        split="test",
        extra={"model": model, "split_kind": dataset.get("split_kind")},
        created=str(started) if started is not None else None,
    )


def read_evaluation_dirs(
    items: Iterable[str | Path | EvalSummary], model_dir: str | Path | None = None
) -> list[str | Path | EvalSummary]:
    """``items`` with each ``cellrlhf evaluate`` directory replaced by its summary (the row of
    ``model_dir``); evaluation files and summaries are passed on as they are."""
    return [
        evaluation_dir_summary(item, model_dir)
        if not isinstance(item, EvalSummary) and is_evaluation_dir(item)
        else item
        for item in items
    ]
