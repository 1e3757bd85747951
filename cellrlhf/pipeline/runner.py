"""Run a pipeline's stages, skipping finished ones and resuming killed training.

A resumable stage re-run after a kill gets ``--resume_from_checkpoint <checkpoint-N>`` when its
output directory holds a complete checkpoint, judged by the training stages' own rule
(:func:`cellrlhf.sft.checkpoints.last_complete_checkpoint`); with ``force`` it gets
``--resume_from_checkpoint none`` and starts over.

Stages start as soon as the stages they need have finished, up to ``max_parallel`` at once (in
file order among the ready ones), like ``make -j``; without ``needs`` every stage waits for all
earlier ones, so a pipeline runs strictly in order.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cellrlhf.pipeline.spec import PipelineSpec, StageSpec
from cellrlhf.pipeline.stage_graph import selected_needs, threads_per_stage
from cellrlhf.pipeline.stage_marker import is_finished, marker_path, write_marker
from cellrlhf.pipeline.stage_process import StageProcess, StageResult, TerminalEcho
from cellrlhf.sft.checkpoints import last_complete_checkpoint

__all__ = [
    "StageFailed",
    "run_pipeline",
    "stage_argv",
    "stage_resume_argument",
    "stage_summary",
    "available_cpus",
]

logger = logging.getLogger(__name__)

# seconds a stage gets to exit after SIGTERM (on Ctrl-C) before it is killed
TERMINATE_GRACE_S = 10.0
# how often the scheduler wakes up while waiting, so Ctrl-C is handled promptly
_POLL_S = 0.5


class StageFailed(RuntimeError):
    """A stage's command exited non-zero; the message names the stage and its log."""


def stage_resume_argument(stage: StageSpec, *, force: bool = False) -> str | Path | None:
    """What a run of ``stage`` passes as ``--resume_from_checkpoint`` (``None``: nothing).

    A resumable stage resumes from the last complete checkpoint of its ``output_dir``, the one its
    training command would pick itself; ``force`` makes it start over (``none``), since training
    commands resume by default.
    """
    if not stage.resumable:
        return None
    if force:
        return "none"
    return last_complete_checkpoint(stage.output_dir)


def stage_argv(stage: StageSpec, *, resume_from: str | Path | None = None) -> list[str]:
    """The full command line of a stage (``accelerate launch ... -m cellrlhf`` or ``python -m``),
    with ``--resume_from_checkpoint resume_from`` when given (:func:`stage_resume_argument`)."""
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


def available_cpus() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_bytes()[-20_000:].decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


class _Scheduler:
    """Starts ready stages, collects finished ones, and stops everything on Ctrl-C."""

    def __init__(
        self,
        spec: PipelineSpec,
        selected: list[StageSpec],
        *,
        max_parallel: int,
        force: bool,
        env: dict[str, str] | None,
        on_stage_end: Callable[[StageSpec, float, bool], None] | None,
    ) -> None:
        self.spec, self.selected, self.max_parallel = spec, selected, max_parallel
        self.force, self.on_stage_end = force, on_stage_end
        self.needs = selected_needs(spec, selected)
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.user_threads = "OMP_NUM_THREADS" in self.env
        self.threads: dict[str, int] = {}
        self.total = len(selected)
        self.number: dict[str, int] = {}
        self.finished: set[str] = set()
        self.pending: list[StageSpec] = []
        self.running: dict[str, StageProcess] = {}  # in start order
        self.argv: dict[str, list[str]] = {}
        self.failures: dict[str, str] = {}  # stage -> why it failed
        self.timings: dict[str, float] = {}
        self.done: queue.Queue[StageResult] = queue.Queue()
        self.echo = TerminalEcho()

    def _number(self, stage: StageSpec) -> str:
        if stage.name not in self.number:
            self.number[stage.name] = len(self.number) + 1
        return f"[{self.number[stage.name]}/{self.total}]"

    def run(self) -> dict[str, float]:
        self._skip_finished()
        if self.user_threads and self.pending:
            logger.info(
                "OMP_NUM_THREADS=%s is set: every stage uses it instead of the pipeline's share "
                "of the %d cores (unset it to let the pipeline plan threads per stage).",
                self.env["OMP_NUM_THREADS"],
                available_cpus(),
            )
        try:
            while True:
                if not self.failures:
                    self._start_ready()
                if not self.running:
                    break
                try:
                    result = self.done.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                self._finish(result)
        except BaseException as err:
            self._stop_all(err)
            raise
        if self.failures:
            not_started = [s.name for s in self.pending]
            order = [s.name for s in self.selected]
            raise StageFailed(
                " ".join(self.failures[name] for name in order if name in self.failures)
                + (f" Not started: {not_started}." if not_started else "")
                + " Fix the cause and run the same command again: finished stages are skipped."
            )
        if self.pending:  # cannot happen: needs only name earlier stages
            raise RuntimeError(f"stages {[s.name for s in self.pending]} could never start")
        return self.timings

    def _skip_finished(self) -> None:
        for stage in self.selected:
            finished, reason = is_finished(self.spec.run_dir, stage)
            if finished and not self.force:
                logger.info("%s %s: skipped (%s)", self._number(stage), stage.name, reason)
                self.finished.add(stage.name)
                if self.on_stage_end:
                    self.on_stage_end(stage, 0.0, True)
            else:
                self.pending.append(stage)

    def _start_ready(self) -> None:
        for stage in list(self.pending):
            if len(self.running) >= self.max_parallel:
                return
            if all(need in self.finished for need in self.needs[stage.name]):
                self._launch(stage)

    def _threads_for(self, stage: StageSpec) -> int:
        """Threads for ``stage`` now: only stages that have not finished can still run beside it,
        so a stage whose possible partners are all done gets every core."""
        live = {s.name for s in self.pending} | set(self.running)
        needs = {
            s.name: tuple(n for n in self.needs[s.name] if n in live)
            for s in self.selected
            if s.name in live
        }
        return threads_per_stage(needs, cpu_count=available_cpus(), max_parallel=self.max_parallel)[
            stage.name
        ]

    def _launch(self, stage: StageSpec) -> None:
        run_dir = self.spec.run_dir
        if self.force and marker_path(run_dir, stage).exists():
            marker_path(run_dir, stage).unlink()
        resume_from = stage_resume_argument(stage, force=self.force)
        argv = stage_argv(stage, resume_from=resume_from)
        env = dict(self.env)
        notes = []
        if resume_from is not None:
            notes.append(
                "starting over" if resume_from == "none" else f"resuming from {resume_from}"
            )
        if not self.user_threads:
            self.threads[stage.name] = self._threads_for(stage)
            env["OMP_NUM_THREADS"] = str(self.threads[stage.name])
            if self.max_parallel > 1:
                notes.append(f"OMP_NUM_THREADS={self.threads[stage.name]}")
        log_path = run_dir / "logs" / f"{stage.name}.log"
        if self.echo.attached is None:
            self.echo.attach(stage.name)  # before start: no output is lost
        else:
            notes.append(f"alongside {list(self.running)}; output in {log_path}")
        logger.info(
            "%s %s: running%s",
            self._number(stage),
            stage.name,
            f" ({'; '.join(notes)})" if notes else "",
        )
        process = StageProcess(stage.name, argv, log_path, env, echo=self.echo, done=self.done)
        self.running[stage.name] = process  # first, so Ctrl-C during the start stops it too
        self.argv[stage.name] = argv
        self.pending.remove(stage)
        try:
            process.start()
        except BaseException:
            del self.running[stage.name]
            if self.echo.attached == stage.name:
                self.echo.attach(None)
            raise

    def _finish(self, result: StageResult) -> None:
        process = self.running.pop(result.name)
        stage = self.spec.stage(result.name)
        message = self._failure(stage, result, process.log_path)
        if message:
            self.failures[stage.name] = message
            logger.error("%s %s", self._number(stage), message)
            if self.echo.missed_output(stage.name):
                logger.error("last lines of %s:\n%s", process.log_path, _log_tail(process.log_path))
            if self.running:
                logger.warning(
                    "starting no new stage; waiting for %s to finish (their work is kept)",
                    list(self.running),
                )
        else:
            write_marker(
                self.spec.run_dir,
                stage,
                seconds=result.seconds,
                argv=self.argv[stage.name],
                cpu_seconds=result.cpu_seconds,
                started_at=result.started_at,
                ended_at=result.ended_at,
            )
            self.timings[stage.name] = result.seconds
            self.finished.add(stage.name)
            summary = stage_summary(stage)
            logger.info(
                "%s %s done in %.1f s (%.1f CPU s)%s",
                self._number(stage),
                stage.name,
                result.seconds,
                result.cpu_seconds,
                f": {summary}" if summary else "",
            )
        if self.echo.attached == stage.name:
            self._attach_next()
        if not message and self.on_stage_end:
            self.on_stage_end(stage, result.seconds, False)

    @staticmethod
    def _failure(stage: StageSpec, result: StageResult, log_path: Path) -> str | None:
        if result.error:
            return (
                f"stage {stage.name!r}: its output could not be written to {log_path} "
                f"({result.error})."
            )
        if result.exit_code != 0:
            return (
                f"stage {stage.name!r} failed (exit {result.exit_code}) after "
                f"{result.seconds:.0f} s; see {log_path}."
            )
        missing = [o for o in stage.outputs if not Path(o).exists()]
        if missing:
            return f"stage {stage.name!r} exited 0 but did not write {missing}; see {log_path}."
        return None

    def _attach_next(self) -> None:
        if not self.running:
            self.echo.attach(None)
            return
        name, process = next(iter(self.running.items()))
        logger.info(
            "[%s] output follows (started %s ago; full log: %s)",
            name,
            _duration(process.running_seconds),
            process.log_path,
        )
        self.echo.attach(name)

    def _stop_all(self, err: BaseException) -> None:
        if not self.running:
            return
        self.echo.attach(None)
        logger.warning(
            "%s: stopping %s (SIGTERM, SIGKILL after %.0f s)",
            "interrupted" if isinstance(err, KeyboardInterrupt) else f"runner error ({err!r})",
            list(self.running),
            TERMINATE_GRACE_S,
        )
        for process in self.running.values():
            process.send_terminate()
        deadline = time.monotonic() + TERMINATE_GRACE_S
        for process in self.running.values():
            process.kill_after(deadline)


def run_pipeline(
    spec: PipelineSpec,
    *,
    force: bool = False,
    only: list[str] | None = None,
    env: dict[str, str] | None = None,
    on_stage_end: Callable[[StageSpec, float, bool], None] | None = None,
    max_parallel: int | None = None,
) -> dict[str, float]:
    """Run every stage of ``spec`` that has not finished yet.

    A stage starts once every stage it needs (see :class:`~cellrlhf.pipeline.spec.StageSpec`)
    has finished in this call or was skipped as finished; up to ``max_parallel`` stages run at
    once. Each stage's output goes to ``run_dir/logs/<stage>.log``; one running stage at a time
    is echoed to the terminal. When several stages may overlap, each gets an equal share of the
    cores as ``OMP_NUM_THREADS`` unless that variable is already set.

    Parameters
    ----------
    spec
        The pipeline (see :func:`cellrlhf.pipeline.spec.load_pipeline`).
    force
        Re-run finished stages too.
    only
        Run just these stages (by name; a name as written in a swept file means all its folds
        and seeds); their needs on stages outside this list are taken as met.
    env
        Extra environment variables for the stage processes.
    on_stage_end
        Called with ``(stage, seconds, skipped)`` after each stage that finished or was skipped.
    max_parallel
        Most stages running at once; ``None`` takes the pipeline file's ``max_parallel``.

    Returns
    -------
    Seconds spent per stage that ran in this call.

    Raises
    ------
    StageFailed
        After a stage failed and the stages running beside it finished (their markers are
        written); names every failed stage.
    """
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    if only:
        only = spec.stage_names(only)
    jobs = spec.max_parallel if max_parallel is None else max_parallel
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"max_parallel must be an integer >= 1, got {jobs!r}")
    selected = [s for s in spec.stages if not only or s.name in only]
    scheduler = _Scheduler(
        spec, selected, max_parallel=jobs, force=force, env=env, on_stage_end=on_stage_end
    )
    return scheduler.run()
