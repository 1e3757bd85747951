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

__all__ = ["RunArtifacts", "collect_artifacts", "find_trainer_history"]


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
