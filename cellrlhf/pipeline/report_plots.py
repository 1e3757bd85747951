"""PNG plots of a run: training curves and timings.

Drawn on :class:`matplotlib.figure.Figure` objects (no pyplot, no backend switch), so they work
headless and leave the caller's matplotlib backend alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["plot_history", "plot_timings"]

# keys worth plotting from Trainer/TRL log histories, in display order
CURVE_KEYS = (
    "loss",
    "eval_loss",
    "eval_perplexity",
    "reward",
    "objective/scores",
    "objective/kl",
    "kl",
    "eval_accuracy",
    "heldout/fidelity",
    "heldout/distinct_fraction",
)


def _figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_history(history: Iterable[dict], title: str, path: Path) -> Path | None:
    """One panel per logged quantity against the training step; ``None`` if nothing to plot."""
    history = list(history)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for entry in history:
        step = entry.get("step")
        if step is None:
            continue
        for key in CURVE_KEYS:
            value = entry.get(key)
            if isinstance(value, (int, float)):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(step)
                ys.append(float(value))
    if not series:
        return None
    n = len(series)
    fig = _figure(figsize=(3.6 * n, 3.0))
    axes = fig.subplots(1, n, squeeze=False)
    for ax, (key, (xs, ys)) in zip(axes[0], series.items(), strict=True):
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, lw=1.5)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_timings(
    seconds: dict[str, float], path: Path, starts: dict[str, float] | None = None
) -> Path | None:
    """Horizontal bars of seconds per stage; with ``starts`` (seconds since the run began), a
    timeline whose bars begin where each stage began, so stages that ran side by side show."""
    if not seconds:
        return None
    names = list(seconds)
    left = [starts[n] for n in names] if starts else [0.0] * len(names)
    fig = _figure(figsize=(6, 0.45 * len(names) + 1))
    ax = fig.subplots()
    ax.barh(names, [seconds[n] for n in names], left=left, color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the run started" if starts else "seconds")
    ax.set_title("stage timeline" if starts else "time per stage")
    for i, name in enumerate(names):
        ax.text(left[i] + seconds[name], i, f" {seconds[name]:.0f}s", va="center", fontsize=8)
    ax.set_xlim(0, max(x + seconds[n] for x, n in zip(left, names, strict=True)) * 1.15)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
