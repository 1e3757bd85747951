"""Write and read an aggregate directory, and the verdict lines of a run.

``write_aggregate(agg, out_dir)`` writes::

    per_fold.csv        setting, fold, seed, run, method, method_type, cell_context, kind,
                        metric, value, n_perturbations
    pooled.csv          setting, method, method_type, kind, metric, mean, ci_low, ci_high,
                        n_perturbations, n_dropped, n_runs
    paired.csv          setting, kind, metric, comparison, left, right, mean_diff, ci_low,
                        ci_high, n_perturbations, n_dropped, sd_perturbations
    runs.csv            label, path, setting, dataset, split_kind, fold, seed, simulated
    not_applicable.csv  setting, method, kind (baselines that predict none of a kind)
    flat_metrics.csv    setting, kind, metric, value (metrics that cannot separate methods)
    verdict.md          per setting: the verdict table and its sentences
    verdict.json        the same, machine-readable (format ``cellrlhf.verdict``)
    pooled_<setting>.png, paired_<setting>.png
    manifest.json       format ``cellrlhf.aggregate``: metrics, headline, n_boot, seed, files

``read_aggregate(dir)`` reads it back into an :class:`~cellrlhf.evaluation.aggregate.Aggregate`;
``find_aggregate_dir`` / ``find_evaluation_dirs`` find them in a run directory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd

from cellrlhf.evaluation.aggregate import REFERENCE_MODEL, Aggregate
from cellrlhf.evaluation.eval_dir import is_evaluation_dir

__all__ = [
    "AGGREGATE_FORMAT",
    "find_evaluation_dirs",
    "read_aggregate",
    "safe_name",
    "find_aggregate_dir",
    "write_aggregate",
]

AGGREGATE_FORMAT = "cellrlhf.aggregate"
_TABLES = ("per_fold", "pooled", "paired", "runs", "not_applicable", "flat_metrics")


def safe_name(text: str, fallback: str = "setting") -> str:
    """A file-name-safe version of a setting, model or context name (``fallback`` when nothing
    of it is safe)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or fallback


def write_aggregate(agg: Aggregate, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the tables, the verdict and the plots of ``agg`` into ``out_dir`` (created).

    Returns
    -------
    File role -> path (``pooled``, ``paired``, ``verdict_md``, ``plot_pooled_<setting>``...).
    """
    from cellrlhf.evaluation.aggregate_plots import plot_paired, plot_pooled
    from cellrlhf.evaluation.verdict import setting_verdicts, verdict_json, verdict_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in _TABLES:
        paths[name] = out / f"{name}.csv"
        getattr(agg, name).to_csv(paths[name], index=False)
    verdicts = setting_verdicts(agg)
    paths["verdict_md"] = out / "verdict.md"
    paths["verdict_md"].write_text(verdict_markdown(verdicts))
    paths["verdict_json"] = out / "verdict.json"
    paths["verdict_json"].write_text(json.dumps(verdict_json(verdicts), indent=1))
    for setting in agg.settings:
        png = plot_pooled(
            agg.pooled,
            setting,
            agg.metrics,
            out / f"pooled_{safe_name(setting)}.png",
            level=agg.confidence_level,
        )
        if png:
            paths[f"plot_pooled_{setting}"] = png
        png = plot_paired(
            agg.paired,
            setting,
            agg.headline,
            out / f"paired_{safe_name(setting)}.png",
            level=agg.confidence_level,
        )
        if png:
            paths[f"plot_paired_{setting}"] = png
    manifest = {
        "format": AGGREGATE_FORMAT,
        "version": 1,
        "headline_metric": agg.headline,
        "metrics": list(agg.metrics),
        "n_boot": agg.n_boot,
        "seed": agg.seed,
        "confidence_level": agg.confidence_level,
        "reference_model": REFERENCE_MODEL,
        "simulated": agg.simulated,
        "identical_models": agg.identical_models,
        "unmeasured_targets": agg.unmeasured_targets,
        "settings": agg.settings,
        "runs": agg.runs.to_dict(orient="records"),
        "files": {k: p.name for k, p in paths.items()},
    }
    paths["manifest"] = out / "manifest.json"
    paths["manifest"].write_text(json.dumps(manifest, indent=1, default=str))
    return paths


def _csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, keep_default_na=True)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def read_aggregate(path: str | os.PathLike) -> Aggregate:
    """Read a directory written by :func:`write_aggregate`.

    Raises
    ------
    FileNotFoundError, ValueError
        ``path`` has no ``manifest.json`` of format ``cellrlhf.aggregate``.
    """
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{manifest_path} is missing: is {path} a `cellrlhf aggregate` out?"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != AGGREGATE_FORMAT:
        raise ValueError(
            f"{path} is not an aggregate directory (format {manifest.get('format')!r})."
        )
    tables = {name: _csv(path / f"{name}.csv") for name in _TABLES}
    for name in ("not_applicable",):
        if tables[name].empty:
            tables[name] = pd.DataFrame(columns=["setting", "method", "kind"])
    if tables["flat_metrics"].empty:
        tables["flat_metrics"] = pd.DataFrame(columns=["setting", "kind", "metric", "value"])
    return Aggregate(
        **tables,
        metrics=tuple(manifest["metrics"]),
        headline=manifest["headline_metric"],
        identical_models=manifest.get("identical_models") or {},
        unmeasured_targets=manifest.get("unmeasured_targets") or {},
        n_boot=int(manifest["n_boot"]),
        seed=int(manifest["seed"]),
        confidence_level=float(manifest["confidence_level"]),
    )


def _format_of(directory: Path) -> str | None:
    try:
        payload = json.loads((directory / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return payload.get("format") if isinstance(payload, dict) else None


def find_evaluation_dirs(root: str | os.PathLike, *, max_depth: int = 3) -> dict[str, Path]:
    """Evaluation directories under ``root`` (``root`` itself included), labelled by their path
    relative to ``root`` with ``/`` as ``_`` (``f0_s1/eval`` -> ``f0_s1_eval``)."""
    root = Path(root)
    found: dict[str, Path] = {}
    for depth in range(max_depth + 1):
        for manifest in sorted(root.glob("/".join(["*"] * depth + ["manifest.json"]))):
            directory = manifest.parent
            if is_evaluation_dir(directory):
                rel = directory.relative_to(root).as_posix()
                found[directory.name if rel == "." else rel.replace("/", "_")] = directory
    return found


def find_aggregate_dir(root: str | os.PathLike, max_depth: int = 2) -> Path | None:
    """``root`` or the first directory below it (``max_depth`` levels) that is an aggregate."""
    root = Path(root)
    if _format_of(root) == AGGREGATE_FORMAT:
        return root
    for depth in range(1, max_depth + 1):
        for manifest in sorted(root.glob("/".join(["*"] * depth + ["manifest.json"]))):
            if _format_of(manifest.parent) == AGGREGATE_FORMAT:
                return manifest.parent
    return None
