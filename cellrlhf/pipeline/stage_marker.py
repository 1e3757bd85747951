"""Done-markers: how a re-run knows which stages already finished."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from cellrlhf.pipeline.spec import StageSpec

__all__ = ["marker_path", "command_hash", "is_finished", "write_marker", "read_markers"]


def marker_path(run_dir: Path, stage: StageSpec) -> Path:
    return Path(run_dir) / ".pipeline" / f"{stage.name}.json"


def command_hash(stage: StageSpec) -> str:
    """Hash of what defines the stage's result (its command and launcher)."""
    payload = json.dumps([stage.command, stage.accelerate_config], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def is_finished(run_dir: Path, stage: StageSpec) -> tuple[bool, str]:
    """Whether ``stage`` finished with the same command and its outputs still exist.

    Returns the answer and a short reason for the log.
    """
    path = marker_path(run_dir, stage)
    if not path.exists():
        return False, "not run yet"
    try:
        marker = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False, "unreadable done-marker"
    if marker.get("command_hash") != command_hash(stage):
        return False, "its command changed since it ran"
    missing = [o for o in stage.outputs if not Path(o).exists()]
    if missing:
        return False, f"outputs missing: {missing}"
    return True, f"finished {marker.get('finished_at', '?')}"


def write_marker(
    run_dir: Path,
    stage: StageSpec,
    *,
    seconds: float,
    argv: list[str],
    cpu_seconds: float | None = None,
    started_at: float | None = None,
    ended_at: float | None = None,
) -> Path:
    """Record that ``stage`` finished: wall ``seconds`` and, when known, the CPU seconds (user +
    system) of its processes, which tell how loaded the machine was (CPU / wall ~ cores used),
    and when it started and ended (unix time), which tells which stages ran side by side."""
    path = marker_path(run_dir, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "stage": asdict(stage),
        "argv": argv,
        "command_hash": command_hash(stage),
        "seconds": round(seconds, 2),
        "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "started_at": None if started_at is None else round(started_at, 3),
        "ended_at": None if ended_at is None else round(ended_at, 3),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)
    return path


def read_markers(run_dir: Path) -> dict[str, dict]:
    """All done-markers of a run, by stage name (for the report's timings)."""
    out: dict[str, dict] = {}
    for path in sorted((Path(run_dir) / ".pipeline").glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
    return out
