"""Write an evaluation of several methods (models, baselines, ceilings) as files people read.

``write_report(evaluations, out_dir)`` writes

- ``metrics.csv``: one row per (method, perturbation), every metric;
- ``summary.csv``: mean per (method, kind) with ``kind`` in ``all`` / ``single`` / ``combo``;
  with a split-half ceiling, a ``"<ceiling> (Spearman-Brown)"`` row maps every
  correlation-like mean to full depth;
- ``metrics.md``: the summary as Markdown tables, one per kind, key metrics only, followed by a
  note wherever a method beats the ceiling (and why that happens);
- ``metrics.png``: bars of the key metrics per method, one panel per metric, singles and
  combos side by side;
- ``delta_scatter.png``: predicted vs real change from control for a few perturbations of one
  method.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cellrlhf.evaluation.scoring import (
    KIND_ALL,
    Evaluation,
    is_correlation_metric,
    spearman_brown,
    summarize,
)

__all__ = [
    "KEY_METRICS",
    "combine",
    "not_applicable_table",
    "summarize_methods",
    "summary_table",
    "spearman_brown_name",
    "is_ceiling",
    "ceiling_notes",
    "write_report",
    "markdown_summary",
]

logger = logging.getLogger(__name__)

KEY_METRICS = (
    "pearson_delta",
    "pearson_delta_top*",
    "pearson_specific",
    "pearson_specific_top*",
    "average_response_fraction",
    "discrimination_score_l1",
    "overlap_at_N",
    "signed_overlap_at_N",
    "mae",
    "distinct_fraction",
    "sampling_reliability",
    "sampling_reliability_specific",
)


def _resolve(metrics: Sequence[str], columns: Sequence[str]) -> list[str]:
    """Metric names present in ``columns``; ``name*`` matches every column starting with name."""
    out: list[str] = []
    for m in metrics:
        if m.endswith("*"):
            out += [c for c in columns if c.startswith(m[:-1])]
        elif m in columns:
            out.append(m)
    return out


def combine(evaluations: Mapping[str, Evaluation]) -> pd.DataFrame:
    """Long table: the per-perturbation rows of every method, with a ``method`` column.

    A method with no rows (a baseline that applies to none of the perturbations) has none here;
    :func:`not_applicable_table` lists what it was asked for.
    """
    frames = [ev.per_perturbation.assign(method=name) for name, ev in evaluations.items()]
    if not frames:
        raise ValueError("nothing to report: no evaluation given.")
    frames = [f for f in frames if len(f)] or frames[:1]
    table = pd.concat(frames, ignore_index=True)
    return table[["method", *[c for c in table.columns if c != "method"]]]


def not_applicable_table(evaluations: Mapping[str, Evaluation]) -> pd.DataFrame:
    """Long table (``method``, ``perturbation``, ``kind``) of the perturbations each method was
    asked for but does not apply to."""
    frames = [
        ev.not_applicable.assign(method=name)[["method", "perturbation", "kind"]]
        for name, ev in evaluations.items()
        if len(ev.not_applicable)
    ]
    if not frames:
        return pd.DataFrame({"method": [], "perturbation": [], "kind": []}, dtype=object)
    return pd.concat(frames, ignore_index=True)


def spearman_brown_name(method: str) -> str:
    """Name of the full-depth (Spearman-Brown) row of a split-half method."""
    return f"{method} (Spearman-Brown)"


def is_ceiling(method: str) -> bool:
    """Whether a method name is a ceiling (split-half, representation), by its name."""
    return method.startswith(("split_half", "representation_"))


def summarize_methods(
    table: pd.DataFrame,
    *,
    not_applicable: pd.DataFrame | None = None,
    spearman_brown_from: str | None = None,
    methods: Sequence[str] = (),
) -> pd.DataFrame:
    """Mean metrics per method and kind of a long table (a ``method`` column, as
    :func:`combine` returns); optionally a Spearman-Brown row for a split-half method.

    ``not_applicable`` (as :func:`not_applicable_table` returns) adds the column
    ``n_not_applicable``: perturbations of that kind the method does not apply to. A method
    that applies to none of a kind's perturbations gets a row with ``n_perturbations == 0``
    and NaN metrics. ``methods`` orders the rows (others follow in order of appearance).

    ``spearman_brown_from`` names a split-half method: a row ``"<name> (Spearman-Brown)"`` is
    added with every correlation-like mean
    (:func:`~cellrlhf.evaluation.scoring.is_correlation_metric`) mapped to full depth, ``2r / (1 +
    r)``, and the other metrics NaN, as ``cell-eval`` reports its data ceiling.
    """
    summary = summarize(table, by=("method",))
    if not_applicable is not None and len(not_applicable):
        summary = _with_coverage(summary, not_applicable, methods)
    if spearman_brown_from is not None and (summary["method"] == spearman_brown_from).any():
        rows = summary[summary["method"] == spearman_brown_from].copy()
        for col in rows.columns:
            if col in ("method", "kind", "n_perturbations", "n_not_applicable"):
                continue
            if is_correlation_metric(col):
                rows[col] = spearman_brown(rows[col].to_numpy(dtype=float))
            else:
                rows[col] = np.nan
        rows["method"] = spearman_brown_name(spearman_brown_from)
        summary = pd.concat([summary, rows], ignore_index=True)
    return summary


def _with_coverage(
    summary: pd.DataFrame, not_applicable: pd.DataFrame, methods: Sequence[str]
) -> pd.DataFrame:
    both = pd.concat([not_applicable.assign(kind=KIND_ALL), not_applicable], ignore_index=True)
    counts = both.groupby(["method", "kind"], sort=False).size().rename("n_not_applicable")
    out = summary.merge(counts.reset_index(), on=["method", "kind"], how="outer", sort=False)
    out["n_perturbations"] = out["n_perturbations"].fillna(0).astype(int)
    out["n_not_applicable"] = out["n_not_applicable"].fillna(0).astype(int)
    order = dict.fromkeys([*methods, *summary["method"], *both["method"]])
    methods = {m: i for i, m in enumerate(order)}
    kinds = {KIND_ALL: 0, "single": 1, "combo": 2}
    rows = np.lexsort((out["kind"].map(lambda k: kinds.get(k, 3)), out["method"].map(methods)))
    return out.iloc[rows].reset_index(drop=True)


def summary_table(
    evaluations: Mapping[str, Evaluation], *, spearman_brown_from: str | None = None
) -> pd.DataFrame:
    """Mean metrics per method and kind (:func:`summarize_methods` of :func:`combine`), with
    the ``n_not_applicable`` counts of :func:`not_applicable_table`."""
    return summarize_methods(
        combine(evaluations),
        not_applicable=not_applicable_table(evaluations),
        spearman_brown_from=spearman_brown_from,
        methods=list(evaluations),
    )


_NONE_APPLIES = "n/a: applies to none of the held-out perturbations"
_SHARED_CONTROL = (
    "predicted and real changes share the same control mean, so on near-null perturbations the "
    "average response correlates with any real change (the ceiling's halves have separate "
    "controls); `pearson_specific` removes this shared part"
)
_NOISY_CEILING = (
    "the ceiling is estimated from half of each perturbation's cells and is noisy with few "
    "cells or near-null perturbations, so a method can exceed it by chance"
)


def _why(metric: str) -> str:
    if metric.startswith("pearson_delta"):
        return _SHARED_CONTROL
    return _NOISY_CEILING


def ceiling_notes(
    summary: pd.DataFrame,
    *,
    ceiling: str | None = None,
    metrics: Sequence[str] | None = None,
) -> list[str]:
    """One sentence per (method, metric) where a method scores above the ceiling, with why.

    Parameters
    ----------
    summary
        Rows of one cell context (``method``, ``kind`` and metric columns).
    ceiling
        The ceiling row's method (default: ``"split_half (Spearman-Brown)"`` when present,
        else ``"split_half"``).
    metrics
        Columns to check (default: every correlation-like column); ``name*`` patterns allowed.
    """
    methods = set(summary["method"])
    if ceiling is None:
        ceiling = next(
            (c for c in (spearman_brown_name("split_half"), "split_half") if c in methods), None
        )
    if ceiling is None or ceiling not in methods:
        return []
    columns = _resolve(metrics, list(summary.columns)) if metrics else list(summary.columns)
    columns = [c for c in columns if is_correlation_metric(c)]
    bound = summary[summary["method"] == ceiling].set_index("kind")
    notes = []
    for method in dict.fromkeys(summary["method"]):
        if is_ceiling(method):
            continue
        rows = summary[summary["method"] == method].set_index("kind")
        for metric in columns:
            above = [
                f"{kind} {_fmt(rows.at[kind, metric])} vs {_fmt(bound.at[kind, metric])}"
                for kind in rows.index
                if kind in bound.index
                and np.isfinite(bound.at[kind, metric])
                and rows.at[kind, metric] > bound.at[kind, metric]
            ]
            if not above:
                continue
            why = _why(metric)
            if metric.startswith("pearson_delta") and "pearson_specific" in rows.columns:
                specific = rows["pearson_specific"].get(KIND_ALL, np.nan)
                why += f" ({method}: {_fmt(specific)})"
            notes.append(
                f"`{method}` exceeds the ceiling `{ceiling}` on `{metric}` "
                f"({'; '.join(above)}): {why}."
            )
    return notes


def _fmt(value) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{float(value):.3f}"


def markdown_summary(
    summary: pd.DataFrame, metrics: Sequence[str] = KEY_METRICS, *, notes: bool = True
) -> str:
    """Markdown tables (one per kind) of the key metrics, methods as rows.

    With ``notes``, the tables are followed by :func:`ceiling_notes` on the metrics shown.
    """
    cols = _resolve(metrics, list(summary.columns))
    lines: list[str] = []
    for kind in [
        KIND_ALL,
        "single",
        "combo",
        *sorted(set(summary["kind"]) - {KIND_ALL, "single", "combo"}),
    ]:
        part = summary[summary["kind"] == kind]
        if part.empty:
            continue
        lines += [f"### {kind}", ""]
        header = ["method", "n", *cols]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * len(header)) + "|")
        for _, row in part.iterrows():
            n, missing = int(row["n_perturbations"]), row.get("n_not_applicable", 0)
            missing = 0 if pd.isna(missing) else int(missing)
            if n == 0 and missing:
                cells = [_NONE_APPLIES, *[""] * (len(cols) - 1)] if cols else []
            else:
                cells = [_fmt(row[c]) for c in cols]
            label = str(row["method"])
            if n and missing:
                label += f" (applies to {n} of {n + missing})"
            lines.append("| " + " | ".join([label, str(n), *cells]) + " |")
        lines.append("")
    above = ceiling_notes(summary, metrics=cols) if notes else []
    if above:
        lines += ["**Above the ceiling:**", "", *(f"- {note}" for note in above), ""]
    return "\n".join(lines)


def _bar_plot(summary: pd.DataFrame, path: Path, metrics: Sequence[str]) -> None:
    from cellrlhf.figures import subplots

    cols = _resolve(metrics, list(summary.columns))
    kinds = [k for k in ("single", "combo") if k in set(summary["kind"])] or [KIND_ALL]
    methods = list(dict.fromkeys(summary["method"]))
    fig, axes = subplots(1, len(cols), figsize=(3.2 * len(cols), 0.35 * len(methods) + 2.2))
    axes = np.atleast_1d(axes)
    height = 0.8 / len(kinds)
    for ax, metric in zip(axes, cols, strict=True):
        for k, kind in enumerate(kinds):
            part = summary[summary["kind"] == kind].set_index("method")
            values = [part[metric].get(m, np.nan) for m in methods]
            ax.barh(
                np.arange(len(methods)) + k * height,
                np.nan_to_num(np.asarray(values, dtype=float)),
                height=height,
                label=kind,
            )
        ax.set_title(metric, fontsize=9)
        ax.set_yticks(np.arange(len(methods)) + 0.4 - height / 2)
        ax.set_yticklabels(methods if ax is axes[0] else [], fontsize=8)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _scatter_plot(evaluation: Evaluation, method: str, path: Path, n_panels: int = 6) -> None:
    from cellrlhf.figures import subplots

    table = evaluation.per_perturbation
    order = np.argsort(-np.nan_to_num(table["pearson_delta"].to_numpy(dtype=float), nan=-2))
    picks = order[np.linspace(0, len(order) - 1, min(n_panels, len(order))).astype(int)]
    picks = list(dict.fromkeys(picks.tolist()))
    fig, axes = subplots(1, len(picks), figsize=(3.0 * len(picks), 3.1), squeeze=False)
    for ax, i in zip(axes[0], picks, strict=True):
        x, y = evaluation.real_delta[i], evaluation.pred_delta[i]
        ax.scatter(x, y, s=6, alpha=0.6)
        lim = float(np.nanmax(np.abs(np.concatenate([x, y])))) or 1.0
        ax.plot([-lim, lim], [-lim, lim], lw=0.8, color="grey")
        ax.axhline(0, lw=0.5, color="grey")
        ax.axvline(0, lw=0.5, color="grey")
        r = table["pearson_delta"].iloc[i]
        ax.set_title(f"{table['perturbation'].iloc[i]}\nr={_fmt(r)}", fontsize=9)
        ax.set_xlabel("real change", fontsize=8)
    axes[0][0].set_ylabel(f"{method}: predicted change", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _first_defined(evaluations: Mapping[str, Evaluation]) -> str:
    """The first method with a defined ``pearson_delta`` (the control baseline has none)."""
    for name, ev in evaluations.items():
        if np.isfinite(ev.per_perturbation["pearson_delta"].to_numpy(dtype=float)).any():
            return name
    return next(iter(evaluations))


def write_report(
    evaluations: Mapping[str, Evaluation],
    out_dir: str | Path,
    *,
    title: str = "Perturbation prediction metrics",
    scatter_method: str | None = None,
    spearman_brown_from: str | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``metrics.csv``, ``summary.csv``, ``metrics.md`` and the PNG plots.

    Parameters
    ----------
    evaluations
        Method name -> :class:`~cellrlhf.evaluation.scoring.Evaluation`.
    out_dir
        Directory (created).
    scatter_method
        Method whose deltas are scattered (default: the first with a defined
        ``pearson_delta``).
    spearman_brown_from
        A split-half method to add full-depth (Spearman-Brown) correlations for.
    notes
        Lines added under the title of ``metrics.md``.

    Returns
    -------
    Name -> path of every file written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics_csv": out / "metrics.csv",
        "summary_csv": out / "summary.csv",
        "markdown": out / "metrics.md",
        "bar_plot": out / "metrics.png",
        "scatter_plot": out / "delta_scatter.png",
    }
    combine(evaluations).to_csv(paths["metrics_csv"], index=False)
    summary = summary_table(evaluations, spearman_brown_from=spearman_brown_from)
    summary.to_csv(paths["summary_csv"], index=False)
    first = next(iter(evaluations.values()))
    text = [f"# {title}", "", *notes, "" if notes else ""]
    text.append(
        f"{first.params['n_genes']} genes; control `{first.params['control']}`; means over "
        "perturbations (`-` = undefined, e.g. the Pearson correlation of a constant prediction)."
    )
    text += ["", markdown_summary(summary)]
    paths["markdown"].write_text("\n".join(text))
    _bar_plot(summary, paths["bar_plot"], KEY_METRICS)
    method = scatter_method or _first_defined(evaluations)
    if method not in evaluations:
        raise KeyError(f"scatter_method={method!r} is not one of {list(evaluations)}.")
    _scatter_plot(evaluations[method], method, paths["scatter_plot"])
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
