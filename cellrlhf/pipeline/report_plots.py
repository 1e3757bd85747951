"""PNG plots of a run: training curves and timings (matplotlib, no display needed)."""

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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    plt = _pyplot()
    n = len(series)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.0), squeeze=False)
    for ax, (key, (xs, ys)) in zip(axes[0], series.items(), strict=True):
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, lw=1.5)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_timings(seconds: dict[str, float], path: Path) -> Path | None:
    """Horizontal bars of seconds per stage."""
    if not seconds:
        return None
    plt = _pyplot()
    names = list(seconds)
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1))
    ax.barh(names, [seconds[n] for n in names], color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("time per stage")
    for i, name in enumerate(names):
        ax.text(seconds[name], i, f" {seconds[name]:.0f}s", va="center", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
