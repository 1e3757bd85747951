"""PNG plots of an evaluation: metric bars per context, predicted-vs-real change, validity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cellrlhf.figures import subplots

__all__ = ["BAR_METRICS", "plot_metric_bars", "plot_change_scatter", "plot_validity"]

BAR_METRICS = (
    "pearson_delta",
    "pearson_specific",
    "discrimination_score_l1",
    "overlap_at_N",
    "mae",
)


def plot_metric_bars(
    summary: pd.DataFrame,
    path: Path,
    *,
    metrics: Sequence[str] = BAR_METRICS,
    models: Sequence[str] = (),
    kind: str = "all",
) -> Path | None:
    """One panel per metric: a bar per method, grouped by cell context (``kind`` rows).

    Model bars are drawn solid, baselines and ceilings hatched.
    """
    part = summary[summary["kind"] == kind]
    metrics = [m for m in metrics if m in part.columns and part[m].notna().any()]
    if part.empty or not metrics:
        return None
    contexts = list(dict.fromkeys(part["cell_context"]))
    methods = list(dict.fromkeys(part["method"]))
    width = 0.85 / len(methods)
    from matplotlib import colormaps

    colors = colormaps["tab20"](np.linspace(0, 1, max(len(methods), 2)))
    fig, axes = subplots(
        len(metrics),
        1,
        figsize=(max(6.0, 1.2 * len(contexts) * len(methods) ** 0.5 + 3), 2.6 * len(metrics)),
        squeeze=False,
    )
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        table = part.pivot_table(
            index="cell_context", columns="method", values=metric, aggfunc="first"
        )
        for j, method in enumerate(methods):
            values = [table.get(method, pd.Series(dtype=float)).get(c, np.nan) for c in contexts]
            ax.bar(
                np.arange(len(contexts)) + j * width,
                np.nan_to_num(np.asarray(values, dtype=float)),
                width=width,
                color=colors[j],
                hatch=None if method in models else "//",
                edgecolor="white" if method in models else "grey",
                label=method,
            )
        ax.set_xticks(np.arange(len(contexts)) + 0.425 - width / 2)
        ax.set_xticklabels(contexts, fontsize=8)
        ax.set_title(f"{metric} ({kind})", fontsize=10)
        ax.axhline(0, lw=0.6, color="grey")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(
        fontsize=7, ncol=min(4, len(methods)), loc="upper left", bbox_to_anchor=(1, 1)
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_change_scatter(
    evaluations: Mapping[str, Mapping[str, object]],
    model: str,
    path: Path,
    *,
    n_panels: int = 6,
) -> Path | None:
    """Predicted vs real change from control of ``model``, one panel per (context, perturbation).

    ``evaluations`` maps cell context -> method -> :class:`~cellrlhf.evaluation.scoring.Evaluation`.
    Panels are spread over contexts (round robin) so that every context shows up.
    """
    per_context = [(ctx, evals[model]) for ctx, evals in evaluations.items() if model in evals]
    queues = [[(ctx, ev, i) for i in range(len(ev.per_perturbation))] for ctx, ev in per_context]
    picks = []
    while len(picks) < n_panels and any(queues):
        for queue in queues:
            if queue and len(picks) < n_panels:
                picks.append(queue.pop(0))
    if not picks:
        return None
    n_cols = min(3, len(picks))
    n_rows = -(-len(picks) // n_cols)
    fig, axes = subplots(n_rows, n_cols, figsize=(3.3 * n_cols, 3.2 * n_rows), squeeze=False)
    for ax in axes.ravel()[len(picks) :]:
        ax.axis("off")
    for ax, (ctx, ev, i) in zip(axes.ravel(), picks, strict=False):
        real, pred = ev.real_delta[i], ev.pred_delta[i]
        ax.scatter(real, pred, s=5, alpha=0.5, color="#4c72b0")
        bound = float(np.nanmax(np.abs(np.concatenate([real, pred])))) or 1.0
        ax.plot([-bound, bound], [-bound, bound], lw=0.7, color="grey", ls="--")
        row = ev.per_perturbation.iloc[i]
        r = row["pearson_delta"]
        label = "r = -" if not np.isfinite(r) else f"r = {r:.2f}"
        ax.set_title(f"{row['perturbation']} | {ctx}\n{label}", fontsize=8)
        ax.set_xlabel("real change from control", fontsize=7)
        ax.set_ylabel(f"{model}: predicted change", fontsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{model}: predicted vs real change per gene", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_validity(validity: pd.DataFrame, path: Path) -> Path | None:
    """Bars of each model's valid-cell, valid-gene and distinct-sentence fractions."""
    columns = [
        c
        for c in ("valid_cell_fraction", "valid_fraction", "distinct_sentence_fraction")
        if c in validity.columns
    ]
    if validity.empty or not columns:
        return None
    overall = validity.groupby("model", sort=False)[columns].mean()
    fig, ax = subplots(figsize=(1.6 * len(overall) * len(columns) ** 0.5 + 3, 3.2))
    width = 0.8 / len(columns)
    for j, column in enumerate(columns):
        ax.bar(np.arange(len(overall)) + j * width, overall[column], width=width, label=column)
    ax.set_xticks(np.arange(len(overall)) + 0.4 - width / 2)
    ax.set_xticklabels(list(overall.index), fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title("generated cells: validity and diversity", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
