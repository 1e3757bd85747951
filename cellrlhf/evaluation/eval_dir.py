"""The evaluation directory written by ``cellrlhf evaluate``: file names, layout and the one reader.

:func:`evaluate_models <cellrlhf.evaluation.evaluate.evaluate_models>` writes it through
:func:`table_paths` and :func:`prediction_path`; every other stage (aggregate, the model card,
the pipeline report) opens it with :func:`open_evaluation_dir`, which checks the manifest and
returns an :class:`EvaluationDir` whose tables are read on first use. Anything missing or
malformed is an :class:`EvaluationDirError` naming the fix.

::

    <out>/manifest.json        format "cellrlhf.evaluation": models, dataset fingerprint,
                               settings, seeds, time
    <out>/metrics.csv          one row per (method, cell context, perturbation): ID_COLUMNS + metrics
    <out>/summary.csv          means per (method, cell context, kind all/single/combo); context
                               "all" averages over every (context, perturbation); model rows
                               carry valid_fraction, valid_cell_fraction, distinct_sentence_fraction
    <out>/validity.csv         per model and context: valid-gene / valid-cell / distinct fractions
    <out>/metrics.md           the summary as Markdown, one table per context
    <out>/metrics.png          metric bars per context; validity.png; pred_vs_real_<model>.png
    <out>/contexts/<ctx>/      the reward stage's report of each context (own tables and plots)
    <out>/predictions/<model>.h5ad
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BAR_PLOT_FILENAME",
    "CONTEXTS_DIRNAME",
    "EVALUATION_FORMAT",
    "EvaluationDir",
    "EvaluationDirError",
    "ID_COLUMNS",
    "MANIFEST_FILENAME",
    "MARKDOWN_FILENAME",
    "METRICS_FILENAME",
    "PREDICTIONS_DIRNAME",
    "SUMMARY_FILENAME",
    "VALIDITY_FILENAME",
    "VALIDITY_PLOT_FILENAME",
    "context_dir",
    "is_evaluation_dir",
    "open_evaluation_dir",
    "prediction_path",
    "scatter_path",
    "table_paths",
]

EVALUATION_FORMAT = "cellrlhf.evaluation"
MANIFEST_FILENAME = "manifest.json"
METRICS_FILENAME = "metrics.csv"
SUMMARY_FILENAME = "summary.csv"
VALIDITY_FILENAME = "validity.csv"
MARKDOWN_FILENAME = "metrics.md"
BAR_PLOT_FILENAME = "metrics.png"
VALIDITY_PLOT_FILENAME = "validity.png"
PREDICTIONS_DIRNAME = "predictions"
CONTEXTS_DIRNAME = "contexts"
_SCATTER_PREFIX = "pred_vs_real_"
# columns of metrics.csv that identify a row (the rest are metrics or counts)
ID_COLUMNS = ("method", "method_type", "cell_context", "perturbation", "kind")
_RERUN = "re-run `cellrlhf evaluate --out {path}`"


class EvaluationDirError(ValueError):
    """The evaluation directory is missing, is not a ``cellrlhf evaluate`` output, or lacks a
    table or column a reader needs."""


def _safe(name: str, fallback: str) -> str:
    from cellrlhf.evaluation.aggregate_files import safe_name

    return safe_name(name, fallback=fallback)


def table_paths(out: str | os.PathLike) -> dict[str, Path]:
    """Where the writer puts ``metrics.csv``, ``summary.csv``, ``validity.csv`` and
    ``metrics.md`` (keys ``metrics_csv``, ``summary_csv``, ``validity_csv``, ``markdown``)."""
    out = Path(out)
    return {
        "metrics_csv": out / METRICS_FILENAME,
        "summary_csv": out / SUMMARY_FILENAME,
        "validity_csv": out / VALIDITY_FILENAME,
        "markdown": out / MARKDOWN_FILENAME,
    }


def prediction_path(out: str | os.PathLike, model: str) -> Path:
    """``predictions/<model>.h5ad`` (the name made safe for a file name)."""
    return Path(out) / PREDICTIONS_DIRNAME / f"{_safe(model, 'model')}.h5ad"


def scatter_path(out: str | os.PathLike, model: str) -> Path:
    """``pred_vs_real_<model>.png``: a model's predicted vs real changes."""
    return Path(out) / f"{_SCATTER_PREFIX}{_safe(model, 'model')}.png"


def context_dir(out: str | os.PathLike, context: str) -> Path:
    """``contexts/<context>/``: the report of one cell context."""
    return Path(out) / CONTEXTS_DIRNAME / _safe(context, "context")


def _nonempty(path: Path) -> Path | None:
    return path if path.is_file() and path.stat().st_size > 0 else None


@dataclass(frozen=True)
class EvaluationDir:
    """A directory written by ``cellrlhf evaluate``, opened by :func:`open_evaluation_dir`;
    the tables are read on first use.

    Attributes
    ----------
    path
        The directory.
    manifest
        Parsed ``manifest.json``.
    """

    path: Path
    manifest: dict

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILENAME

    @property
    def models(self) -> dict[str, dict]:
        """Model name -> its record (``dir``, ``stage``, ``weights_sha256``, ...)."""
        return dict(self.manifest.get("models") or {})

    @property
    def dataset(self) -> dict:
        """The manifest's ``dataset`` block (``dir``, ``name``, ``fingerprint``, ``split_kind``)."""
        return dict(self.manifest.get("dataset") or {})

    @property
    def dataset_dir(self) -> Path | None:
        """The dataset directory the models were scored on (``None`` when not recorded)."""
        where = self.dataset.get("dir")
        return Path(str(where)) if where else None

    @property
    def settings(self) -> dict:
        """The sampling and scoring settings (``EvalSettings.to_dict()``)."""
        return dict(self.manifest.get("settings") or {})

    @property
    def baselines(self) -> tuple[str, ...]:
        """The baselines asked for (those without a row did not apply)."""
        return tuple(self.settings.get("baselines") or ())

    @property
    def identical_models(self) -> list[list[str]]:
        """Groups of models with byte-identical weights."""
        return [list(group) for group in self.manifest.get("identical_models") or []]

    @property
    def simulated(self) -> bool:
        return bool(self.manifest.get("simulated"))

    def read_table(self, filename: str, *, required: bool = True) -> pd.DataFrame | None:
        """A CSV table of the directory; when missing or unreadable: ``None``, or
        (``required``) an :class:`EvaluationDirError`."""
        import pandas as pd

        path = self.path / filename
        try:
            return pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            if not required:
                return None
            raise EvaluationDirError(
                f"{path} is missing or unreadable ({type(err).__name__}): the evaluation did not "
                f"finish; {_RERUN.format(path=self.path)}."
            ) from err

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """``metrics.csv`` with its :data:`ID_COLUMNS` as strings."""
        metrics = self.read_table(METRICS_FILENAME)
        missing = [c for c in ID_COLUMNS if c not in metrics.columns]
        if missing:
            raise EvaluationDirError(
                f"{self.path / METRICS_FILENAME} lacks column(s) {missing}; it was written by an "
                f"older cellrlhf: {_RERUN.format(path=self.path)}."
            )
        metrics[list(ID_COLUMNS)] = metrics[list(ID_COLUMNS)].astype(str)
        return metrics

    @cached_property
    def summary(self) -> pd.DataFrame:
        """``summary.csv``: means per method, cell context and kind."""
        return self.read_table(SUMMARY_FILENAME)

    @property
    def bar_plot(self) -> Path | None:
        return _nonempty(self.path / BAR_PLOT_FILENAME)

    @property
    def validity_plot(self) -> Path | None:
        return _nonempty(self.path / VALIDITY_PLOT_FILENAME)

    @property
    def scatter_plots(self) -> list[Path]:
        """The non-empty ``pred_vs_real_<model>.png`` files, sorted."""
        found = sorted(self.path.glob(f"{_SCATTER_PREFIX}*.png"))
        return [p for p in found if _nonempty(p)]


def _read_manifest(root: Path) -> dict | None:
    try:
        payload = json.loads((root / MANIFEST_FILENAME).read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def is_evaluation_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a ``manifest.json`` of format :data:`EVALUATION_FORMAT`."""
    manifest = _read_manifest(Path(path))
    return manifest is not None and manifest.get("format") == EVALUATION_FORMAT


def open_evaluation_dir(path: str | os.PathLike) -> EvaluationDir:
    """Open a directory written by ``cellrlhf evaluate`` and check its manifest.

    Raises
    ------
    EvaluationDirError
        The directory does not exist, its ``manifest.json`` is missing or unreadable, or the
        manifest is not of format :data:`EVALUATION_FORMAT`.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise EvaluationDirError(
            f"evaluation directory {root} does not exist: run `cellrlhf evaluate --out {root}` "
            "first, or pass the --out directory of an evaluation."
        )
    manifest = _read_manifest(root)
    if manifest is None:
        raise EvaluationDirError(
            f"{root / MANIFEST_FILENAME} is missing or unreadable: {root} is not (or not yet) "
            f"the --out directory of a finished `cellrlhf evaluate`; {_RERUN.format(path=root)}."
        )
    if manifest.get("format") != EVALUATION_FORMAT:
        raise EvaluationDirError(
            f"{root} is not a `cellrlhf evaluate` output (manifest format "
            f"{manifest.get('format')!r}, expected {EVALUATION_FORMAT!r}): pass the --out "
            "directory of `cellrlhf evaluate`."
        )
    return EvaluationDir(root, manifest)
