"""The report's first sections: the verdict, the pooled results with intervals, and the data.

The verdict comes from the run's aggregate (``cellrlhf aggregate``), or from its evaluation
directories aggregated for the report when the run has no aggregate stage
(:func:`~cellrlhf.pipeline.report_data.load_aggregate`).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from cellrlhf.metrics.intervals import SMALL_SAMPLE
from cellrlhf.pipeline.report_data import AggregateSource, RunArtifacts
from cellrlhf.pipeline.report_render import Section

__all__ = [
    "DATA_TITLE",
    "INTERVALS_TITLE",
    "VERDICT_TITLE",
    "data_manifests",
    "data_section",
    "data_tables",
    "intervals_section",
    "verdict_section",
]

VERDICT_TITLE = "Verdict"
INTERVALS_TITLE = "Test perturbations: pooled means and paired differences (95% intervals)"
DATA_TITLE = "Data"
# metrics shown in the pooled table next to the headline (those aggregated)
_POOLED_COLUMNS = ("pearson_specific", "pearson_delta", "mae")
_LIST_LIMIT = 12


def _runs_phrase(agg, setting: str) -> str:
    runs = agg.runs[agg.runs["setting"] == setting]
    folds, seeds = runs["fold"].nunique(), runs["seed"].nunique()
    return (
        f"{len(runs)} run{'s' if len(runs) != 1 else ''} ({folds} fold{'s' if folds != 1 else ''}"
        f" x {seeds} seed{'s' if seeds != 1 else ''})"
    )


def verdict_section(source: AggregateSource, manifests: dict | None = None) -> Section:
    """Per setting: the verdict table (best model, best baseline, ceilings, paired differences
    with intervals) and its sentences; first, the measured evidence the prompts carry (from
    the data ``manifests``) and the baselines that use the same information."""
    from cellrlhf.data.evidence_config import evidence_note
    from cellrlhf.evaluation.verdict import setting_verdicts, verdict_table

    sec = Section(VERDICT_TITLE)
    agg = source.aggregate
    if agg is None:
        sec.text(f"No verdict. {source.origin}")
        return sec
    sec.text(
        f"Headline metric `{agg.headline}` on the **test** perturbations (never used to select a "
        f"model), all held-out perturbations of each setting; {agg.confidence_level:.0%} "
        f"intervals over perturbations: percentile bootstrap ({agg.n_boot} resamples, seed "
        f"{agg.seed}), Student's t below {SMALL_SAMPLE} perturbations, where a bootstrap is too "
        f"narrow. Source: {source.origin}."
    )
    for note in dict.fromkeys(evidence_note(m) for m in (manifests or {}).values()):
        if note:
            sec.text(note)
    for verdict in setting_verdicts(agg):
        sec.heading(f"{verdict.setting}: {_runs_phrase(agg, verdict.setting)}")
        sec.table(verdict_table(verdict))
        sec.bullets(verdict.sentences)
    return sec


def _with_interval(mean: float, low: float, high: float) -> str:
    if not math.isfinite(mean):
        return "undefined"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _pooled_table(agg, setting: str) -> pd.DataFrame:
    metrics = list(dict.fromkeys([agg.headline, *_POOLED_COLUMNS]))
    metrics = [m for m in metrics if m in agg.metrics]
    part = agg.pooled[(agg.pooled["setting"] == setting) & (agg.pooled["kind"] == "all")]
    rows = {}
    for _, r in part[part["metric"].isin(metrics)].iterrows():
        row = rows.setdefault(r["method"], {"method": r["method"], "type": r["method_type"]})
        row[r["metric"]] = _with_interval(r["mean"], r["ci_low"], r["ci_high"])
        if r["metric"] == agg.headline:
            row["perturbations"] = int(r["n_perturbations"])
    table = pd.DataFrame(list(rows.values()))
    return table[[c for c in ["method", "type", "perturbations", *metrics] if c in table.columns]]


def _paired_table(agg, setting: str) -> pd.DataFrame:
    part = agg.paired[(agg.paired["setting"] == setting) & (agg.paired["metric"] == agg.headline)]
    return pd.DataFrame(
        {
            "kind": part["kind"],
            "comparison": part["comparison"],
            agg.headline: [
                _with_interval(m, lo, hi)
                for m, lo, hi in zip(
                    part["mean_diff"], part["ci_low"], part["ci_high"], strict=True
                )
            ],
            "perturbations": part["n_perturbations"],
            "dropped (undefined)": part["n_dropped"],
        }
    )


def _per_fold_table(agg, setting: str) -> pd.DataFrame:
    part = agg.per_fold[
        (agg.per_fold["setting"] == setting)
        & (agg.per_fold["kind"] == "all")
        & (agg.per_fold["metric"] == agg.headline)
    ]
    if part.empty:
        return part
    part = part.assign(
        run=[f"fold {f} seed {s}" for f, s in zip(part["fold"], part["seed"], strict=True)]
    )
    table = part.pivot_table(index="method", columns="run", values="value", sort=False)
    return table.round(3).reset_index()


def intervals_section(source: AggregateSource, out_dir: Path) -> Section:
    """Pooled means with intervals, paired differences and the per-fold table, per setting."""
    sec = Section(INTERVALS_TITLE)
    agg = source.aggregate
    if agg is None:
        sec.text(source.origin)
        return sec
    sec.text(
        "Means over test perturbations (each perturbation's seeds, folds and cell contexts "
        "averaged first) with [95% interval]; differences are paired per perturbation. "
        "Files: per_fold.csv, pooled.csv, paired.csv of the aggregate (every metric and kind)."
    )
    from cellrlhf.evaluation.aggregate_files import safe_name
    from cellrlhf.evaluation.aggregate_plots import plot_paired, plot_pooled

    for setting in agg.settings:
        sec.heading(setting)
        sec.text("Pooled means, all held-out perturbations:")
        sec.table(_pooled_table(agg, setting))
        paired = _paired_table(agg, setting)
        if len(paired):
            sec.text(f"Paired differences on `{agg.headline}` (per kind):")
            sec.table(paired)
        runs = agg.runs[agg.runs["setting"] == setting]
        if len(runs) > 1:
            sec.text(f"`{agg.headline}` per fold and seed (mean over perturbations):")
            sec.table(_per_fold_table(agg, setting))
        png = plot_pooled(
            agg.pooled, setting, agg.metrics, out_dir / f"pooled_{safe_name(setting)}.png"
        )
        if png:
            sec.image(png, f"{setting}: pooled means with 95% intervals (test perturbations)")
        png = plot_paired(
            agg.paired, setting, agg.headline, out_dir / f"paired_{safe_name(setting)}.png"
        )
        if png:
            sec.image(png, f"{setting}: paired differences on {agg.headline} (test perturbations)")
    return sec


def _names(values, limit: int = _LIST_LIMIT) -> str:
    values = [str(v) for v in values or []]
    if not values:
        return "-"
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more


def _count(value) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "-"


def _source_text(manifest: dict) -> str:
    source = manifest.get("source") or {}
    if source.get("kind") == "simulated" or manifest.get("simulated"):
        return "simulated"
    return str(source.get("file") or source.get("path") or source.get("name") or "-")


def data_tables(manifest: dict, splits: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(overview, splits)``: one row about the data set; one row per split with its cells and
    its held-out perturbations (or pairs)."""
    source = manifest.get("source") or {}
    split = manifest.get("split") or {}
    config_split = (manifest.get("config") or {}).get("split") or {}
    counts = manifest.get("counts") or {}
    perts = [p for p in manifest.get("perturbations") or [] if p != "control"]
    fold = config_split.get("fold")
    overview = pd.DataFrame(
        [
            {
                "data set": manifest.get("name", "-"),
                "source": _source_text(manifest),
                "cells": _count(source.get("n_cells_selected") or counts.get("n_cells")),
                "perturbations": _count(len(perts) or counts.get("n_perturbations")),
                "cell contexts": _names(manifest.get("cell_contexts")),
                "genes": _count((manifest.get("vocab") or {}).get("n_genes")),
                "held out": split.get("kind", "-"),
                "evidence in prompts": ", ".join(
                    ((manifest.get("config") or {}).get("evidence") or {}).get("kinds") or []
                )
                or "none",
                "fold": "-" if fold is None else f"{fold} of {config_split.get('folds')}",
            }
        ]
    )
    cells = split.get("cells") or splits.get("counts") or {}
    held = {
        "validation": splits.get("validation_pairs") or splits.get("validation_perturbations"),
        "test": splits.get("test_pairs")
        or split.get("test_pairs")
        or splits.get("test_perturbations")
        or split.get("test_perturbations"),
        "excluded": splits.get("excluded_perturbations") or split.get("excluded_perturbations"),
    }
    contexts = splits.get("test_contexts") or split.get("test_contexts")
    rows = [{"split": "train", "cells": _count(cells.get("train")), "held-out units": "the rest"}]
    for name, units in held.items():
        if name in cells or units:
            text = _names(units)
            if name == "validation" and not units:
                text = "- (cells of training perturbations)"
            if name == "test" and contexts:
                text += f" (contexts: {_names(contexts)})"
            rows.append({"split": name, "cells": _count(cells.get(name)), "held-out units": text})
    return overview, pd.DataFrame(rows)


def data_manifests(art: RunArtifacts) -> dict:
    """Data stage name -> its dataset manifest (one ``"data"`` entry for a single data stage)."""
    return art.data_manifests or ({"data": art.data_manifest} if art.data_manifest else {})


def data_section(art: RunArtifacts) -> Section:
    """The data set(s) as small human tables: what, how many, and what is held out where."""
    sec = Section(DATA_TITLE)
    manifests = data_manifests(art)
    if not manifests:
        sec.text("No data manifest found (the data stage has not run).")
        return sec
    if art.simulated:
        sec.text(
            "**SIMULATED DATA.** This run used cellrlhf's simulator, not real measurements: "
            "every number below describes the simulator, not biology."
        )
    tables = {s: data_tables(m, art.data_splits.get(s, {})) for s, m in manifests.items()}
    overview = pd.concat([o.assign(stage=s) for s, (o, _) in tables.items()], ignore_index=True)
    if len(tables) == 1:
        overview = overview.drop(columns="stage")
    else:
        overview = overview[["stage", *[c for c in overview.columns if c != "stage"]]]
    sec.table(overview)
    for stage, (_, splits) in tables.items():
        sec.text(f"Splits of `{stage}` (held-out units per split):" if len(tables) > 1 else
                 "Splits (held-out units per split):")  # fmt: skip
        sec.table(splits)
    counts = next(iter(manifests.values())).get("counts") or {}
    parts = [
        f"{what} " + ", ".join(f"{k} {v:,}" for k, v in counts[key].items())
        for key, what in (("sft", "SFT examples"), ("rl", "RL prompts"))
        if isinstance(counts.get(key), dict)
    ]
    if parts:
        sec.text("; ".join(parts) + ".")
    return sec
