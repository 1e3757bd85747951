"""Read evaluation results for a model card: the metrics of the latest evaluation.

The output directory of ``cellrlhf evaluate`` (``summary.csv`` + ``manifest.json``) is read as
one evaluation: the key metrics (pearson_delta and friends, :data:`~cellrlhf.reward.eval_report.
KEY_METRICS`) of the model's row over all cell contexts, one per held-out kind (``all``,
``single``, ``combo``), named ``"<metric>/<kind>"``; the run's bookkeeping is never read as a
metric. Other evaluation files are JSON. Accepted shapes: ``{"metrics": {name: value, ...}, ...}`` (optionally
with ``"dataset"``, ``"split"``, ``"created"``), or a plain mapping whose numeric leaves are the
metrics (nested keys are joined with ``/``). When several files are given, the latest one wins:
the one with the greatest ``"created"`` / ``"timestamp"`` field, else the newest file.
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
    "is_evaluation_dir",
    "evaluation_dir_summary",
]

logger = logging.getLogger(__name__)

EVAL_FILENAMES = ("eval_results.json",)
# bookkeeping that trainers log next to metrics; not model quality
_NOT_METRIC_PARTS = ("runtime", "per_second", "num_tokens", "timestamp")
_EVALUATION_FORMAT = "cellrlhf.evaluation"  # manifest.json of `cellrlhf evaluate`
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
    """

    metrics: dict[str, float]
    source: Path
    dataset: str | None = None
    split: str | None = None
    extra: dict = field(default_factory=dict)


def find_eval_files(model_dir: str | Path, extra: Iterable[str | Path] = ()) -> list[Path]:
    """Evaluation files inside ``model_dir`` (``eval_results.json``) plus ``extra`` files/dirs."""
    found = [Path(model_dir) / n for n in EVAL_FILENAMES if (Path(model_dir) / n).is_file()]
    for item in extra:
        item = Path(item)
        if is_evaluation_dir(item):
            found.append(item)
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


def _parse(path: Path) -> tuple[EvalSummary, str | None]:
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
    summary = EvalSummary(
        metrics=metrics,
        source=path,
        dataset=payload.get("dataset") if isinstance(payload.get("dataset"), str) else None,
        split=payload.get("split") if isinstance(payload.get("split"), str) else None,
    )
    return summary, str(created) if created is not None else None


def is_evaluation_dir(path: str | Path) -> bool:
    """Whether ``path`` is an output directory of ``cellrlhf evaluate``."""
    path = Path(path)
    if not (path / "summary.csv").is_file() or not (path / "manifest.json").is_file():
        return False
    manifest = json.loads((path / "manifest.json").read_text())
    return isinstance(manifest, Mapping) and manifest.get("format") == _EVALUATION_FORMAT


def _evaluated_model(manifest: Mapping, model_dir: Path | None, path: Path) -> str:
    models = manifest.get("models") or {}
    if model_dir is not None:
        mine = [
            name
            for name, record in models.items()
            if record.get("dir") and Path(record["dir"]).resolve() == Path(model_dir).resolve()
        ]
        if len(mine) == 1:
            return mine[0]
    if len(models) == 1:
        return next(iter(models))
    raise ValueError(
        f"the evaluation in {path} scored models {sorted(models)}, none of them saved in "
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

    from cellrlhf.evaluation.evaluate import ALL_CONTEXTS
    from cellrlhf.reward.eval_report import KEY_METRICS

    path = Path(path)
    manifest = json.loads((path / "manifest.json").read_text())
    model = _evaluated_model(manifest, Path(model_dir) if model_dir else None, path)
    summary = pd.read_csv(path / "summary.csv")
    rows = summary[(summary["method"] == model) & (summary["cell_context"] == ALL_CONTEXTS)]
    columns = [c for c in summary.columns if any(fnmatch(c, p) for p in KEY_METRICS)]
    metrics = {
        f"{column}/{row['kind']}": float(row[column])
        for _, row in rows.iterrows()
        for column in columns
        if pd.notna(row[column]) and math.isfinite(float(row[column]))
    }
    dataset = manifest.get("dataset") or {}
    return EvalSummary(
        metrics=metrics,
        source=path / "summary.csv",
        dataset=dataset.get("name") if isinstance(dataset.get("name"), str) else None,
        split="test",
        extra={"model": model, "split_kind": dataset.get("split_kind")},
    )


def latest_eval(
    files: Iterable[str | Path], *, model_dir: str | Path | None = None
) -> EvalSummary | None:
    """The summary of the latest evaluation among ``files``; ``None`` when there is none.

    ``model_dir`` picks the model's row in ``cellrlhf evaluate`` directories."""
    parsed = []
    for f in files:
        if is_evaluation_dir(f):
            manifest = json.loads((Path(f) / "manifest.json").read_text())
            summary, created = evaluation_dir_summary(f, model_dir), manifest.get("started")
        else:
            summary, created = _parse(Path(f))
        if not summary.metrics:
            logger.warning("no numeric metrics in %s; ignored for the model card.", f)
            continue
        parsed.append((created or "", Path(f).stat().st_mtime, summary))
    if not parsed:
        return None
    return max(parsed, key=lambda item: (item[0], item[1]))[2]
