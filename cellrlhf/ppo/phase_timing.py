"""Where the time of an RL step goes: generation, reward, reference log-probs, update.

A :class:`PhaseTimer` measures named phases with *exclusive* time: when a phase runs inside
another (the reward computed inside the rollout), its time is taken out of the outer phase, so
the phases of a step add up to at most the step's wall time. The trainers of this package open
phases around TRL's own methods (:mod:`cellrlhf.ppo.ppo_trainer`, :mod:`cellrlhf.ppo.grpo_trainer`);
each closed step becomes one record of :attr:`PhaseTimer.history` and its timings are added to
the trainer's logs as ``timing/<phase>_s`` and ``timing/<phase>_fraction``.

Phases used by the trainers:

- ``generation``: sampling the completions;
- ``reward``: scoring them (reward model forward, or the programmatic reward);
- ``value`` (PPO): the value model's forward on the rollout;
- ``logprobs``: log-probabilities of the completions under the policy / reference (the KL term);
- ``update``: forward + backward of the loss (PPO: all PPO epochs, optimizer steps included);
- ``other``: the rest of the step (optimizer step, data, callbacks, logging).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PHASES", "PhaseTimer", "timing_summary", "format_timing_table"]

PHASES = ("generation", "reward", "value", "logprobs", "update", "other")


class PhaseTimer:
    """Exclusive wall time of named phases, step by step.

    Parameters
    ----------
    clock
        Seconds as a float (``time.perf_counter``; injectable for tests).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._stack: list[list] = []  # [name, start, time spent in nested phases]
        self._current: dict[str, float] = defaultdict(float)
        self._step_start: float | None = None
        self.history: list[dict[str, float]] = []
        self._unlogged: list[dict[str, float]] = []

    # ------------------------------------------------------------------ measuring
    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``name`` (minus any phase nested inside it)."""
        if self._step_start is None:
            self._step_start = self._clock()
        self._stack.append([name, self._clock(), 0.0])
        try:
            yield
        finally:
            _, start, nested = self._stack.pop()
            elapsed = self._clock() - start
            self._current[name] += elapsed - nested
            if self._stack:
                self._stack[-1][2] += elapsed

    def begin_step(self) -> None:
        """Mark the start of a step (kept if the step already started)."""
        if self._step_start is None:
            self._step_start = self._clock()

    def end_step(self, step: int, *, remainder: str = "other") -> dict[str, float]:
        """Close the current step; its record lists every phase and ``total``.

        Time of the step outside every phase is added to the phase named ``remainder``.
        """
        now = self._clock()
        measured = sum(self._current.values())
        total = now - self._step_start if self._step_start is not None else measured
        record: dict[str, float] = {"step": float(step)}
        for name, seconds in self._current.items():
            record[name] = seconds
        record[remainder] = record.get(remainder, 0.0) + max(total - measured, 0.0)
        record["total"] = max(total, measured)
        self.history.append(record)
        self._unlogged.append(record)
        self._current = defaultdict(float)
        self._step_start = None
        return record

    # ------------------------------------------------------------------ reporting
    def pop_log_dict(self) -> dict[str, float]:
        """Mean timings of the steps closed since the last call, as trainer log entries."""
        records, self._unlogged = self._unlogged, []
        if not records:
            return {}
        return {f"timing/{k}": v for k, v in timing_summary(records).items()}

    def save(self, path: str | Path) -> Path:
        """Write the per-step history and its summary as JSON."""
        path = Path(path)
        payload = {"steps": self.history, "mean": timing_summary(self.history)}
        path.write_text(json.dumps(payload, indent=1))
        return path


def timing_summary(records: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean seconds per step of every phase (``<phase>_s``) and its share (``<phase>_fraction``)."""
    if not records:
        return {}
    names = sorted({k for r in records for k in r if k not in {"step", "total"}})
    n = len(records)
    total = sum(r["total"] for r in records) / n
    out = {"step_s": total}
    for name in names:
        seconds = sum(r.get(name, 0.0) for r in records) / n
        out[f"{name}_s"] = seconds
        out[f"{name}_fraction"] = seconds / total if total > 0 else 0.0
    return out


def format_timing_table(summaries: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per run, mean seconds per step and share of each phase."""
    phases = [p for p in PHASES if any(f"{p}_s" in s for s in summaries.values())]
    head = "| run | step (s) | " + " | ".join(phases) + " |"
    rule = "|---|---:|" + "---:|" * len(phases)
    rows = [head, rule]
    for name, summary in summaries.items():
        cells = [
            f"{summary.get(f'{p}_s', 0.0):.3f} s ({100 * summary.get(f'{p}_fraction', 0.0):.1f} %)"
            for p in phases
        ]
        rows.append(f"| {name} | {summary.get('step_s', 0.0):.3f} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
