"""Collect what a finished (or partly finished) run left on disk, for the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cellrlhf.data.layout import MANIFEST_FORMAT as DATASET_FORMAT
from cellrlhf.data.layout import read_dataset_manifest
from cellrlhf.evaluation.aggregate_files import AGGREGATE_FORMAT
from cellrlhf.evaluation.eval_dir import (
    EVALUATION_FORMAT,
    SUMMARY_FILENAME,
    VALIDITY_FILENAME,
    EvaluationDir,
    open_evaluation_dir,
)
from cellrlhf.pipeline.spec import PipelineSpec
from cellrlhf.pipeline.stage_marker import read_markers
from cellrlhf.sft.checkpoints import last_complete_checkpoint

__all__ = [
    "AGGREGATE_FORMAT",
    "DATASET_FORMAT",
    "EVALUATION_FORMAT",
    "AggregateSource",
    "EvaluationArtifacts",
    "RunArtifacts",
    "collect_artifacts",
    "find_trainer_history",
    "load_aggregate",
    "read_evaluation",
]

# keys of splits.json listed in the report (the per-cell lists are not)
_SPLIT_LIST_KEYS = ("cells", "groups")


@dataclass
class EvaluationArtifacts:
    """What ``cellrlhf evaluate`` left in its output directory."""

    stage: str
    path: Path
    manifest: dict
    summary: pd.DataFrame | None = None
    validity: pd.DataFrame | None = None
    bar_plot: Path | None = None
    scatter_plots: list[Path] = field(default_factory=list)
    validity_plot: Path | None = None

    @property
    def simulated(self) -> bool:
        return bool(self.manifest.get("simulated"))


@dataclass
class RunArtifacts:
    """Everything the report shows, gathered from the run directory."""

    spec: PipelineSpec
    markers: dict[str, dict] = field(default_factory=dict)
    data_manifest: dict[str, Any] | None = None
    histories: dict[str, list[dict]] = field(default_factory=dict)
    json_results: dict[str, dict] = field(default_factory=dict)
    metric_tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    images: dict[str, list[Path]] = field(default_factory=dict)
    evaluation: EvaluationArtifacts | None = None
    evaluations: dict[str, EvaluationArtifacts] = field(default_factory=dict)
    data_manifests: dict[str, dict] = field(default_factory=dict)
    data_splits: dict[str, dict] = field(default_factory=dict)
    aggregate_dir: Path | None = None

    @property
    def simulated(self) -> bool:
        return bool(self.data_manifest and self.data_manifest.get("simulated"))


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def find_trainer_history(output_dir: Path) -> list[dict]:
    """``log_history`` of a Trainer run: the output dir's ``trainer_state.json``, else its
    latest checkpoint's."""
    for candidate in (output_dir / "trainer_state.json", output_dir / "log_history.json"):
        payload = _read_json(candidate)
        if isinstance(payload, dict) and "log_history" in payload:
            return list(payload["log_history"])
        if isinstance(payload, list):
            return payload
    ckpt = last_complete_checkpoint(output_dir)
    if ckpt is not None:
        payload = _read_json(ckpt / "trainer_state.json")
        if isinstance(payload, dict):
            return list(payload.get("log_history", []))
    return []


# result files the stages write, shown when present (stage output dir relative)
_RESULT_FILES = (
    "reward_model_eval.json",
    "heldout_eval_history.json",
    "eval_results.json",
    "generation_metrics.json",
    "summary.json",
)


def read_evaluation(stage: str, evaluation: EvaluationDir) -> EvaluationArtifacts:
    """Tables and plots of an evaluation output directory (a missing table is ``None``)."""
    return EvaluationArtifacts(
        stage=stage,
        path=evaluation.path,
        manifest=evaluation.manifest,
        summary=evaluation.read_table(SUMMARY_FILENAME, required=False),
        validity=evaluation.read_table(VALIDITY_FILENAME, required=False),
        bar_plot=evaluation.bar_plot,
        scatter_plots=evaluation.scatter_plots,
        validity_plot=evaluation.validity_plot,
    )


def _read_splits(out: Path, manifest: dict) -> dict:
    """The held-out lists of a data set's ``splits.json`` (without its per-cell lists)."""
    name = (manifest.get("split") or {}).get("file") or "splits.json"
    payload = _read_json(out / name)
    if not isinstance(payload, dict):
        return {}
    return {k: v for k, v in payload.items() if k not in _SPLIT_LIST_KEYS}


def _add_data_manifest(art: RunArtifacts, stage: str, out: Path) -> None:
    """A data set stage's manifest and held-out lists, when it has a readable manifest."""
    manifest = read_dataset_manifest(out, required=False)
    if manifest is None:
        return
    art.data_manifests[stage] = manifest
    art.data_splits[stage] = _read_splits(out, manifest)
    if art.data_manifest is None or stage == "data":
        art.data_manifest = manifest


def collect_artifacts(spec: PipelineSpec) -> RunArtifacts:
    """Read markers, manifests, histories, metric tables and plots of every stage."""
    art = RunArtifacts(spec=spec, markers=read_markers(spec.run_dir))
    for stage in spec.stages:
        if not stage.output_dir:
            continue
        out = Path(stage.output_dir)
        if not out.is_dir():
            continue
        fmt = _format(out)
        if stage.name == "data" or fmt == DATASET_FORMAT:
            _add_data_manifest(art, stage.name, out)
        if fmt == EVALUATION_FORMAT:
            art.evaluations[stage.name] = read_evaluation(stage.name, open_evaluation_dir(out))
            art.evaluation = art.evaluations[stage.name]
            continue  # shown in its own report section, not among the generic tables
        if fmt == AGGREGATE_FORMAT:
            art.aggregate_dir = out
            continue  # the verdict and interval sections
        history = find_trainer_history(out)
        if history:
            art.histories[stage.name] = history
        for name in _RESULT_FILES:
            payload = _read_json(out / name)
            if payload is not None:
                art.json_results[f"{stage.name}/{name}"] = payload
        for csv in sorted(out.glob("*metrics*.csv")):
            try:
                art.metric_tables[f"{stage.name}/{csv.name}"] = pd.read_csv(csv)
            except (OSError, pd.errors.ParserError):
                continue
        pngs = sorted(p for p in out.glob("*.png") if p.stat().st_size > 0)
        if pngs:
            art.images[stage.name] = pngs
    default = spec.run_dir / "aggregate"
    if art.aggregate_dir is None and _format(default) == AGGREGATE_FORMAT:
        art.aggregate_dir = default
    return art


def _format(directory: Path) -> str | None:
    payload = _read_json(directory / "manifest.json")
    return payload.get("format") if isinstance(payload, dict) else None


@dataclass
class AggregateSource:
    """The run's aggregate (or why there is none) and where it came from."""

    aggregate: Any | None
    origin: str


def load_aggregate(art: RunArtifacts, *, n_boot: int = 2000, seed: int = 0) -> AggregateSource:
    """The run's aggregate directory when there is one, else its evaluation directories
    aggregated now (one evaluation: intervals over its perturbations)."""
    from cellrlhf.evaluation.aggregate import aggregate_evaluations
    from cellrlhf.evaluation.aggregate_files import read_aggregate

    if art.aggregate_dir is not None:
        try:
            return AggregateSource(read_aggregate(art.aggregate_dir), f"`{art.aggregate_dir}`")
        except (OSError, ValueError, KeyError) as err:
            if not art.evaluations:
                return AggregateSource(None, f"The aggregate could not be read: {err}")
    if not art.evaluations:
        return AggregateSource(None, "No evaluation found (the evaluate stage has not run).")
    evals = {name: ev.path for name, ev in art.evaluations.items()}
    try:
        agg = aggregate_evaluations(evals, n_boot=n_boot, seed=seed)
    except (OSError, ValueError) as err:
        return AggregateSource(None, f"The evaluation could not be aggregated: {err}")
    where = ", ".join(f"`{p}`" for p in evals.values())
    return AggregateSource(agg, f"aggregated for this report from {where} (no aggregate stage)")
