"""Run a pipeline's stages in order, skipping finished ones and resuming killed training."""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cellrlhf.pipeline.spec import PipelineSpec, StageSpec
from cellrlhf.pipeline.stage_marker import is_finished, marker_path, write_marker

__all__ = ["StageFailed", "run_pipeline", "stage_argv", "latest_checkpoint", "stage_summary"]

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class StageFailed(RuntimeError):
    """A stage's command exited non-zero; the message names the stage and its log."""


def latest_checkpoint(output_dir: str | Path | None) -> Path | None:
    """The highest-numbered complete ``checkpoint-N`` directory in ``output_dir``, if any.

    A checkpoint counts as complete when it holds ``trainer_state.json`` (the Trainer writes it
    last), so a directory left half-written by a kill is ignored.
    """
    if not output_dir or not Path(output_dir).is_dir():
        return None
    found = []
    for child in Path(output_dir).iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (child / "trainer_state.json").exists():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def stage_argv(stage: StageSpec, *, resume_from: Path | None = None) -> list[str]:
    """The full command line of a stage (``accelerate launch ... -m cellrlhf`` or ``python -m``)."""
    args = list(stage.command)
    if resume_from is not None:
        args += ["--resume_from_checkpoint", str(resume_from)]
    if stage.accelerate_config:
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            stage.accelerate_config,
            "-m",
            "cellrlhf",
            *args,
        ]
    return [sys.executable, "-m", "cellrlhf", *args]


def stage_summary(stage: StageSpec, limit: int = 6) -> str:
    """One line of the stage's headline numbers, read from its ``summary`` JSON file."""
    if not stage.summary or not Path(stage.summary).exists():
        return ""
    try:
        payload = json.loads(Path(stage.summary).read_text())
    except json.JSONDecodeError:
        return ""
    items = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in payload.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    return ", ".join(items[:limit])


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of every finished child process (and theirs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_logged(argv: list[str], log_path: Path, env: dict[str, str]) -> int:
    """Run ``argv``, copying its output to the terminal (progress bars too) and to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n$ {' '.join(argv)}\n".encode())
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(4096):
            log.write(chunk)
            log.flush()  # users tail the stage log while it runs
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
        return proc.wait()


def run_pipeline(
    spec: PipelineSpec,
    *,
    force: bool = False,
    only: list[str] | None = None,
    env: dict[str, str] | None = None,
    on_stage_end: Callable[[StageSpec, float, bool], None] | None = None,
) -> dict[str, float]:
    """Run every stage of ``spec`` that has not finished yet.

    Parameters
    ----------
    spec
        The pipeline (see :func:`cellrlhf.pipeline.spec.load_pipeline`).
    force
        Re-run finished stages too.
    only
        Run just these stages (by name), in pipeline order.
    env
        Extra environment variables for the stage processes.
    on_stage_end
        Called with ``(stage, seconds, skipped)`` after each stage.

    Returns
    -------
    Seconds spent per stage that ran in this call.
    """
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if only:
        unknown = set(only) - {s.name for s in spec.stages}
        if unknown:
            raise KeyError(
                f"unknown stage(s) {sorted(unknown)}; stages: {[s.name for s in spec.stages]}"
            )
    child_env = {**os.environ, **(env or {})}
    child_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1))))
    child_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    timings: dict[str, float] = {}
    stages = [s for s in spec.stages if not only or s.name in only]
    for index, stage in enumerate(stages, start=1):
        finished, reason = is_finished(run_dir, stage)
        if finished and not force:
            logger.info("[%d/%d] %s: skipped (%s)", index, len(stages), stage.name, reason)
            if on_stage_end:
                on_stage_end(stage, 0.0, True)
            continue
        if force and marker_path(run_dir, stage).exists():
            marker_path(run_dir, stage).unlink()
        resume_from = latest_checkpoint(stage.output_dir) if stage.resumable and not force else None
        argv = stage_argv(stage, resume_from=resume_from)
        logger.info(
            "[%d/%d] %s: running%s",
            index,
            len(stages),
            stage.name,
            f" (resuming from {resume_from})" if resume_from else "",
        )
        log_path = run_dir / "logs" / f"{stage.name}.log"
        start, cpu_start = time.perf_counter(), _children_cpu_seconds()
        code = _run_logged(argv, log_path, child_env)
        seconds = time.perf_counter() - start
        cpu_seconds = _children_cpu_seconds() - cpu_start
        if code != 0:
            raise StageFailed(
                f"stage {stage.name!r} failed (exit {code}) after {seconds:.0f} s; see {log_path}. "
                "Fix the cause and run the same command again: finished stages are skipped."
            )
        missing = [o for o in stage.outputs if not Path(o).exists()]
        if missing:
            raise StageFailed(
                f"stage {stage.name!r} exited 0 but did not write {missing}; see {log_path}."
            )
        write_marker(run_dir, stage, seconds=seconds, argv=argv, cpu_seconds=cpu_seconds)
        timings[stage.name] = seconds
        summary = stage_summary(stage)
        logger.info(
            "%s done in %.1f s (%.1f CPU s)%s",
            stage.name,
            seconds,
            cpu_seconds,
            f": {summary}" if summary else "",
        )
        if on_stage_end:
            on_stage_end(stage, seconds, False)
    return timings
