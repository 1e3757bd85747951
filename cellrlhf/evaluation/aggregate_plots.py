"""PNG plots of an aggregate: pooled means and paired differences with their intervals.

Drawn on :class:`matplotlib.figure.Figure` objects (no pyplot, no backend switch), so they work
headless and never change the caller's matplotlib backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["plot_paired", "plot_pooled"]

_COLORS = {"model": "#4c72b0", "baseline": "#8c8c8c", "ceiling": "#55a868"}


def _errors(table: pd.DataFrame, center: str) -> np.ndarray:
    mid = table[center].to_numpy(dtype=float)
    low = np.nan_to_num(mid - table["ci_low"].to_numpy(dtype=float), nan=0.0)
    high = np.nan_to_num(table["ci_high"].to_numpy(dtype=float) - mid, nan=0.0)
    return np.vstack([np.maximum(low, 0.0), np.maximum(high, 0.0)])


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_pooled(
    pooled: pd.DataFrame,
    setting: str,
    metrics: Sequence[str],
    path: Path,
    *,
    kind: str = "all",
    level: float = 0.95,
) -> Path | None:
    """One panel per metric: each method's pooled mean with its interval (models blue,
    baselines grey, ceilings green); ``None`` when nothing is defined."""
    from matplotlib.figure import Figure

    part = pooled[(pooled["setting"] == setting) & (pooled["kind"] == kind)]
    metrics = [m for m in metrics if part.loc[part["metric"] == m, "mean"].notna().any()]
    if not metrics:
        return None
    methods = list(dict.fromkeys(part["method"]))
    fig = Figure(figsize=(3.3 * len(metrics) + 1.6, 0.32 * len(methods) + 1.4))
    axes = fig.subplots(1, len(metrics), squeeze=False, sharey=True)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        rows = part[part["metric"] == metric].set_index("method").reindex(methods)
        y = np.arange(len(methods))
        colors = [_COLORS.get(t, "#333333") for t in rows["method_type"].fillna("")]
        ax.barh(y, rows["mean"].fillna(0.0), color=colors, alpha=0.85)
        ax.errorbar(
            rows["mean"], y, xerr=_errors(rows, "mean"), fmt="none", ecolor="black", capsize=2
        )
        for i, value in enumerate(rows["mean"]):
            if not np.isfinite(value):
                ax.text(0, i, " undefined", va="center", fontsize=7, color="#a33")
        ax.axvline(0, color="black", lw=0.6)
        ax.set_yticks(y, methods, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{setting}: pooled mean over perturbations, {level:.0%} bootstrap CI", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_paired(
    paired: pd.DataFrame,
    setting: str,
    metric: str,
    path: Path,
    *,
    kind: str = "all",
    level: float = 0.95,
) -> Path | None:
    """Paired differences on one metric with their intervals and the zero line."""
    from matplotlib.figure import Figure

    part = paired[
        (paired["setting"] == setting) & (paired["kind"] == kind) & (paired["metric"] == metric)
    ]
    part = part[part["mean_diff"].notna()]
    if part.empty:
        return None
    fig = Figure(figsize=(6.0, 0.4 * len(part) + 1.3))
    ax = fig.subplots()
    y = np.arange(len(part))
    ax.errorbar(part["mean_diff"], y, xerr=_errors(part, "mean_diff"), fmt="o", capsize=3)
    ax.axvline(0, color="#a33", lw=1)
    ax.set_yticks(y, part["comparison"], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"difference in {metric} (paired per perturbation)")
    ax.set_title(f"{setting}: paired differences, {level:.0%} bootstrap CI", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
