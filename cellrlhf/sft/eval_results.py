"""Read evaluation results for a model card: the metrics of the latest evaluation.

Evaluation files are JSON. Accepted shapes: ``{"metrics": {name: value, ...}, ...}`` (optionally
with ``"dataset"``, ``"split"``, ``"created"``), or a plain mapping whose numeric leaves are the
metrics (nested keys are joined with ``/``); the run's bookkeeping is never read as a metric.
The output directory of ``cellrlhf evaluate`` is read by
:func:`cellrlhf.hub.evaluation_summary.evaluation_dir_summary` (the evaluation stage's format);
its :class:`EvalSummary` can be passed wherever a file is. When several are given, the latest
one wins: the one with the greatest ``"created"`` / ``"timestamp"`` field, else the newest file.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "EvalSummary",
    "EVAL_FILENAMES",
    "find_eval_files",
    "latest_eval",
]

logger = logging.getLogger(__name__)

EVAL_FILENAMES = ("eval_results.json",)
# bookkeeping that trainers log next to metrics; not model quality
_NOT_METRIC_PARTS = ("runtime", "per_second", "num_tokens", "timestamp")
# a directory whose manifest.json names a cellrlhf format is a stage's output (a `cellrlhf
# evaluate` directory among them), not a folder of evaluation files
_STAGE_MANIFEST = "manifest.json"
_FORMAT_PREFIX = "cellrlhf."
_NOT_METRIC_NAMES = {"created", "epoch", "step", "global_step", "total_flos"}


@dataclass(frozen=True)
class EvalSummary:
    """Metrics of one evaluation run.

    Attributes
    ----------
    metrics
        Metric name -> finite number, in file order.
    source
        The file they came from.
    dataset, split
        What was evaluated, when the file says so.
    created
        When the evaluation ran, when the file says so (orders several evaluations).
    """

    metrics: dict[str, float]
    source: Path
    dataset: str | None = None
    split: str | None = None
    extra: dict = field(default_factory=dict)
    created: str | None = None


def find_eval_files(
    model_dir: str | Path, extra: Iterable[str | Path | EvalSummary] = ()
) -> list[Path | EvalSummary]:
    """Evaluation files inside ``model_dir`` (``eval_results.json``) plus ``extra`` files/dirs
    (summaries already read are kept as they are)."""
    found: list[Path | EvalSummary] = [
        Path(model_dir) / n for n in EVAL_FILENAMES if (Path(model_dir) / n).is_file()
    ]
    for item in extra:
        if isinstance(item, EvalSummary):
            found.append(item)
            continue
        item = Path(item)
        if _is_stage_dir(item):
            found.append(item)  # refused by latest_eval with the reader named
        elif item.is_dir():
            found += sorted(item.glob("*.json"))
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"evaluation results {item} do not exist.")
    return found


def _flatten(payload: Mapping, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
        elif isinstance(value, Mapping):
            out.update(_flatten(value, prefix=f"{name}/"))
    return out


def _parse(path: Path) -> EvalSummary:
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"evaluation results {path} are not valid JSON: {err}") from err
    if not isinstance(payload, Mapping):
        raise ValueError(f"evaluation results {path} must be a JSON object, not {type(payload)}.")
    metrics_block = payload.get("metrics", payload)
    if not isinstance(metrics_block, Mapping):
        raise ValueError(f"'metrics' in {path} must be an object of name -> number.")
    metrics = {
        name: value
        for name, value in _flatten(metrics_block).items()
        if name.rsplit("/", 1)[-1] not in _NOT_METRIC_NAMES
        and not any(part in name for part in _NOT_METRIC_PARTS)
    }
    created = payload.get("created", payload.get("timestamp"))
    return EvalSummary(
        metrics=metrics,
        source=path,
        dataset=payload.get("dataset") if isinstance(payload.get("dataset"), str) else None,
        split=payload.get("split") if isinstance(payload.get("split"), str) else None,
        created=str(created) if created is not None else None,
    )


def _is_stage_dir(path: str | Path) -> bool:
    """Whether ``path`` is an output directory of a cellrlhf stage (its ``manifest.json`` names a
    ``cellrlhf.*`` format), e.g. of ``cellrlhf evaluate``, whose owner reads it."""
    try:
        manifest = json.loads((Path(path) / _STAGE_MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, Mapping) and str(manifest.get("format", "")).startswith(
        _FORMAT_PREFIX
    )


def latest_eval(files: Iterable[str | Path | EvalSummary]) -> EvalSummary | None:
    """The summary of the latest evaluation among ``files``; ``None`` when there is none.

    ``files`` are JSON files or summaries already read (a ``cellrlhf evaluate`` directory is read
    by :func:`cellrlhf.hub.evaluation_summary.evaluation_dir_summary` first).

    Raises
    ------
    ValueError
        A ``cellrlhf evaluate`` directory passed as it is.
    """
    parsed = []
    for f in files:
        if not isinstance(f, EvalSummary) and _is_stage_dir(f):
            raise ValueError(
                f"{f} is the output directory of a cellrlhf stage, not evaluation files: read a "
                "`cellrlhf evaluate` directory with "
                "cellrlhf.hub.evaluation_summary.evaluation_dir_summary (as `cellrlhf push "
                "--eval-results` does) and pass the summary."
            )
        summary = f if isinstance(f, EvalSummary) else _parse(Path(f))
        if not summary.metrics:
            logger.warning("no numeric metrics in %s; ignored for the model card.", summary.source)
            continue
        parsed.append((summary.created or "", summary.source.stat().st_mtime, summary))
    if not parsed:
        return None
    return max(parsed, key=lambda item: (item[0], item[1]))[2]
