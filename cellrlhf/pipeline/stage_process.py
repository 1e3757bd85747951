"""One running stage: its process, its log, its share of the terminal and its exact CPU time."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["StageResult", "TerminalEcho", "StageProcess"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageResult:
    """How a stage's process ended.

    Attributes
    ----------
    name
        The stage.
    exit_code
        The process's exit status (negative: killed by that signal).
    seconds
        Wall seconds from start to exit.
    cpu_seconds
        User + system CPU seconds of the process and of every descendant it waited for (e.g.
        ``accelerate launch`` and the Python process it starts), from ``wait4``: exact even
        when other stages ran at the same time.
    started_at, ended_at
        Unix times of start and exit.
    error
        Why the output could not be copied to the log, when it could not.
    """

    name: str
    exit_code: int
    seconds: float
    cpu_seconds: float
    started_at: float
    ended_at: float
    error: str | None = None


class TerminalEcho:
    """Copies the output of one stage at a time (the attached one) to the terminal (stderr)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._attached: str | None = None
        self._missed: set[str] = set()

    def missed_output(self, name: str) -> bool:
        """Whether some of ``name``'s output was not shown (it ran while another was attached)."""
        return name in self._missed

    @property
    def attached(self) -> str | None:
        return self._attached

    def attach(self, name: str | None) -> None:
        with self._lock:
            self._attached = name

    def write(self, name: str, chunk: bytes) -> None:
        with self._lock:
            if name != self._attached:
                self._missed.add(name)
                return
            stream = sys.stderr
            buffer = getattr(stream, "buffer", None)
            if buffer is not None:
                stream.flush()
                buffer.write(chunk)
                buffer.flush()
            else:  # a text-only stream (some notebooks and test captures)
                stream.write(chunk.decode(errors="replace"))
                stream.flush()


class StageProcess:
    """A stage's command run as a child process, read by one thread.

    The thread appends the child's output (stdout and stderr) to ``log_path`` as it arrives, hands
    it to ``echo``, then reaps the child with ``os.wait4`` and puts a :class:`StageResult` on
    ``done``.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str],
        *,
        echo: TerminalEcho,
        done: queue.Queue[StageResult],
    ) -> None:
        self.name, self.argv, self.log_path, self.env = name, argv, Path(log_path), env
        self._echo, self._done = echo, done
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._reaped = threading.Event()
        self._tree: list[Any] = []  # psutil.Process objects, found on terminate
        self.started_at = 0.0
        self._start_clock = 0.0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"\n$ {' '.join(self.argv)}\n".encode())
        log.flush()
        self.started_at, self._start_clock = time.time(), time.perf_counter()
        try:
            self._proc = subprocess.Popen(
                self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env
            )
        except BaseException:
            log.close()
            raise
        self._thread = threading.Thread(
            target=self._pump, args=(log,), name=f"stage-{self.name}", daemon=True
        )
        self._thread.start()

    @property
    def running_seconds(self) -> float:
        return time.perf_counter() - self._start_clock

    def _pump(self, log: BinaryIO) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        error = None
        try:
            while chunk := proc.stdout.read1(65536):
                log.write(chunk)
                log.flush()  # users tail the stage log while it runs
                self._echo.write(self.name, chunk)
        except Exception as err:  # a full disk must not leave the child blocked on its pipe
            error = f"{type(err).__name__}: {err}"
        finally:
            proc.stdout.close()
            log.close()
            exit_code, cpu_seconds = self._reap(proc)
            self._done.put(
                StageResult(
                    name=self.name,
                    exit_code=exit_code,
                    seconds=time.perf_counter() - self._start_clock,
                    cpu_seconds=cpu_seconds,
                    started_at=self.started_at,
                    ended_at=time.time(),
                    error=error,
                )
            )

    def _reap(self, proc: subprocess.Popen[bytes]) -> tuple[int, float]:
        """Wait for the child; its rusage covers it and the descendants it reaped."""
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except ChildProcessError:  # reaped elsewhere (only when being killed): no usage left
            self._reaped.set()
            return (proc.returncode if proc.returncode is not None else -1), 0.0
        proc.returncode = os.waitstatus_to_exitcode(status)
        self._reaped.set()
        return proc.returncode, usage.ru_utime + usage.ru_stime

    def send_terminate(self) -> None:
        """SIGTERM the stage's process and all its descendants (found before any of them exits)."""
        import psutil

        self._tree = []
        if self._proc is None or self._reaped.is_set():
            return
        try:
            parent = psutil.Process(self._proc.pid)
            self._tree = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in self._tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()

    def kill_after(self, deadline: float) -> None:
        """Wait until ``deadline`` (``time.monotonic()``) for the tree to exit, then SIGKILL it."""
        import psutil

        tree = self._tree
        # the direct child is reaped by the reader thread; wait_procs polls its descendants
        _, alive = psutil.wait_procs(tree[1:], timeout=max(0.0, deadline - time.monotonic()))
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if tree and not self._reaped.is_set():
            alive.append(tree[0])
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if self._thread is not None and alive:
            self._thread.join(5.0)
