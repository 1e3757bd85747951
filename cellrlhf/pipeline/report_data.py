"""Collect what a finished (or partly finished) run left on disk, for the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cellrlhf.pipeline.runner import latest_checkpoint
from cellrlhf.pipeline.spec import PipelineSpec
from cellrlhf.pipeline.stage_marker import read_markers

__all__ = [
    "EVALUATION_FORMAT",
    "EvaluationArtifacts",
    "RunArtifacts",
    "collect_artifacts",
    "find_trainer_history",
    "read_evaluation",
]

# ``format`` of the manifest.json written by ``cellrlhf evaluate``
EVALUATION_FORMAT = "cellrlhf.evaluation"


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
    ckpt = latest_checkpoint(output_dir)
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


def _read_csv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def _png(path: Path) -> Path | None:
    return path if path.is_file() and path.stat().st_size > 0 else None


def read_evaluation(stage: str, out: Path, manifest: dict) -> EvaluationArtifacts:
    """Tables and plots of an evaluation output directory."""
    return EvaluationArtifacts(
        stage=stage,
        path=out,
        manifest=manifest,
        summary=_read_csv(out / "summary.csv"),
        validity=_read_csv(out / "validity.csv"),
        bar_plot=_png(out / "metrics.png"),
        scatter_plots=[p for p in sorted(out.glob("pred_vs_real_*.png")) if _png(p)],
        validity_plot=_png(out / "validity.png"),
    )


def collect_artifacts(spec: PipelineSpec) -> RunArtifacts:
    """Read markers, manifests, histories, metric tables and plots of every stage."""
    art = RunArtifacts(spec=spec, markers=read_markers(spec.run_dir))
    for stage in spec.stages:
        if not stage.output_dir:
            continue
        out = Path(stage.output_dir)
        if not out.is_dir():
            continue
        manifest = _read_json(out / "manifest.json")
        if stage.name == "data" and isinstance(manifest, dict):
            art.data_manifest = manifest
        if isinstance(manifest, dict) and manifest.get("format") == EVALUATION_FORMAT:
            art.evaluation = read_evaluation(stage.name, out, manifest)
            continue  # shown in its own report section, not among the generic tables
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
    return art
