"""The verdict of an aggregate: per setting, the best model, the best baseline, the ceiling, the
paired differences with their intervals, and plain sentences.

A paired difference ``left - right`` with a 95% interval reads (for a metric where higher is
better; the reverse for ``mae``/``mse``):

- ``improved`` (a model over SFT) / ``beat`` (a model over the best baseline): the interval lies
  above 0, e.g. "GRPO improved held-out perturbation-specific fidelity over SFT by +0.06 (95% CI
  0.02 to 0.10, 24 perturbations).";
- ``not_improved``: the interval contains 0: "GRPO did not improve ... over SFT (-0.01, 95% CI
  -0.05 to 0.03, 24 perturbations).";
- ``worse``: the interval lies below 0;
- ``no_interval``: one perturbation only, no interval and no verdict;
- ``undefined``: no perturbation where both sides are defined.

A model ahead of its reference without a verdict gets a planning note: how many held-out
perturbations an interval at the observed spread between perturbations needs to clear 0 for a
difference of that size (:func:`~cellrlhf.metrics.intervals.perturbations_needed`), since the
perturbation, not the seed, is the interval's unit.

The headline metric is the aggregate's (``pearson_specific`` when the evaluations have it, else
``pearson_delta``); the verdict reads kind ``all`` (every held-out perturbation of the setting).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from cellrlhf.evaluation.aggregate import (
    ALL,
    REFERENCE_MODEL,
    SPEARMAN_BROWN_SUFFIX,
    SPLIT_HALF,
    WHERE_DEFINED,
    Aggregate,
    best_baselines,
    higher_is_better,
)
from cellrlhf.evaluation.aggregate_inputs import is_fit_check

__all__ = [
    "Comparison",
    "MethodScore",
    "SettingVerdict",
    "compare_sentence",
    "display_name",
    "metric_phrase",
    "setting_verdicts",
    "verdict_json",
    "verdict_lines",
    "verdict_markdown",
    "verdict_table",
    "verdict_text",
]

METRIC_PHRASES = {
    "pearson_specific": "perturbation-specific fidelity",
    "pearson_specific_top20": "perturbation-specific fidelity on the top 20 genes",
    "pearson_delta": "fidelity of the change from control",
    "pearson_delta_top20": "fidelity of the change from control on the top 20 genes",
    "discrimination_score_l1": "perturbation discrimination",
    "overlap_at_N": "DE-gene overlap",
    "mae": "mean absolute error",
}
_MODEL_NAMES = {"sft": "SFT", "ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "dpo": "DPO"}
REPRESENTATION = "representation_decoder"
SIMULATED_WARNING = "SIMULATED DATA: these numbers describe the simulator, not biology."


def metric_phrase(metric: str) -> str:
    """Plain words for a metric (``pearson_specific`` -> "perturbation-specific fidelity")."""
    return METRIC_PHRASES.get(metric, metric)


def display_name(method: str) -> str:
    """``grpo`` -> ``GRPO``, ``grpo_last`` -> ``GRPO (last)``; other names unchanged."""
    head, _, rest = method.partition("_")
    if head.lower() not in _MODEL_NAMES:
        return method
    return _MODEL_NAMES[head.lower()] + (f" ({rest.replace('_', ' ')})" if rest else "")


@dataclass
class MethodScore:
    """A method's pooled mean with its interval."""

    method: str
    mean: float
    ci_low: float
    ci_high: float
    n_perturbations: int


@dataclass
class Comparison:
    """A paired difference ``left - right`` and what it says."""

    label: str
    left: str
    right: str
    mean_diff: float
    ci_low: float
    ci_high: float
    n_perturbations: int
    n_dropped: int
    status: str
    sentence: str


@dataclass
class SettingVerdict:
    """The verdict of one setting (held-out kind x data set) on one metric."""

    setting: str
    metric: str
    kind: str
    simulated: bool
    best_model: MethodScore | None
    best_baseline: MethodScore | None
    ceiling: MethodScore | None
    representation: MethodScore | None
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def sentences(self) -> list[str]:
        """The comparisons' sentences, then the notes (a simulated-data warning first)."""
        warning = [SIMULATED_WARNING] if self.simulated else []
        return warning + [c.sentence for c in self.comparisons] + list(self.notes)


def _digits(*values: float) -> int:
    """2 decimals, 3 when a nonzero value would print as 0.00."""
    small = any(v != 0 and abs(v) < 0.005 for v in values if math.isfinite(v))
    return 3 if small else 2


def compare_sentence(
    left: str,
    right: str,
    diff: float,
    low: float,
    high: float,
    n: int,
    *,
    metric: str,
    against_baseline: bool = False,
    where_defined: bool = False,
    confidence_level: float = 0.95,
) -> tuple[str, str]:
    """``(status, sentence)`` for the paired difference ``left - right`` (see the module doc).

    ``right`` is the baseline's name when ``against_baseline`` (the sentence then says "the best
    baseline (mean)") or ``where_defined`` (a baseline defined on only some perturbations:
    "additive where it is defined").
    """
    a = display_name(left)
    if where_defined:
        against_baseline, b = True, f"{right} where it is defined"
    else:
        b = f"the best baseline ({right})" if against_baseline else display_name(right)
    what = f"held-out {metric_phrase(metric)}"
    if n == 0 or not math.isfinite(diff):
        return (
            "undefined",
            f"undefined: {a} vs {b} on {what}: no perturbation where both are defined.",
        )
    d = _digits(diff, low, high)
    level = f"{confidence_level:.0%} CI"
    count = f"{n} perturbation{'s' if n != 1 else ''}"
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no_interval", (
            f"{a} vs {b} on {what}: {diff:+.{d}f} on {count}, too few for an interval (no verdict)."
        )
    ci = f"{level} {low:.{d}f} to {high:.{d}f}, {count}"
    sign = 1.0 if higher_is_better(metric) else -1.0
    better, worse = sign * low > 0, sign * high < 0
    if against_baseline:
        if better:
            return "improved", f"{a} beat {b} on {what} by {diff:+.{d}f} ({ci})."
        if worse:
            return "worse", f"{a} was worse than {b} on {what} by {diff:+.{d}f} ({ci})."
        return "not_improved", f"{a} did not beat {b} on {what} ({diff:+.{d}f}, {ci})."
    if better:
        return "improved", f"{a} improved {what} over {b} by {diff:+.{d}f} ({ci})."
    if worse:
        return "worse", f"{a} was worse than {b} on {what} by {diff:+.{d}f} ({ci})."
    return "not_improved", f"{a} did not improve {what} over {b} ({diff:+.{d}f}, {ci})."


def _score(pooled: pd.DataFrame, method: str | None) -> MethodScore | None:
    if method is None:
        return None
    row = pooled[pooled["method"] == method]
    if row.empty or not row["mean"].notna().any():
        return None
    r = row.iloc[0]
    return MethodScore(
        method, float(r["mean"]), float(r["ci_low"]), float(r["ci_high"]), int(r["n_perturbations"])
    )


def _best_model(pooled: pd.DataFrame, metric: str) -> str | None:
    models = pooled[(pooled["method_type"] == "model") & pooled["mean"].notna()]
    if models.empty:
        return None
    order = models["mean"] if higher_is_better(metric) else -models["mean"]
    return str(models.loc[order.idxmax(), "method"])


def _above_ceiling_note(base: MethodScore, ceil: MethodScore, metric: str) -> str:
    """Why a baseline can score above the split-half ceiling, for this kind of metric."""
    lead = (
        f"The best baseline ({base.method}, {base.mean:.2f}) scores above the split-half "
        f"ceiling ({ceil.mean:.2f}) on {metric}. The ceiling compares two halves of the real "
        "cells, each with half the cells' noise, while a baseline is built from every training "
        "cell"
    )
    if metric.startswith("pearson_specific"):
        return (
            lead + ": where the held-out perturbations have little effect of their own, a "
            "baseline that is right about how they differ from the average training "
            "perturbation (e.g. `control`: they respond less than average) beats two noisy "
            "halves. A model must beat this baseline, not only the mean."
        )
    return (
        lead + ", and its change shares the test control with the real change: on "
        "perturbations with little effect, the average response correlates with the real "
        "change through that shared control noise. That is the systematic effect, not signal "
        "specific to a perturbation; read pearson_specific."
    )


# a planning figure above this many times the held-out perturbations reads as "no difference"
_PRACTICAL = 10


FIT_CHECK_NOTE = (
    "Fit check: these perturbations were trained on, and every baseline predicts each from the "
    "training cells without it (leave-one-out). A model below the leave-one-out mean here does "
    "not fit its own training data. It says nothing about unseen perturbations."
)


def _planning_note(c: Comparison, spread: float, metric: str, level: float) -> str | None:
    """For a comparison ahead but without a verdict: the perturbations an interval needs."""
    from cellrlhf.metrics.intervals import perturbations_needed

    sign = 1.0 if higher_is_better(metric) else -1.0
    if c.status != "not_improved" or not sign * c.mean_diff > 0:
        return None
    needed = perturbations_needed(c.mean_diff, spread, confidence_level=level)
    if needed is None or needed <= c.n_perturbations:
        # none would do, or (a skewed bootstrap interval wider than the normal one) the
        # normal approximation would already have cleared 0 here: no planning figure
        return None
    pair = f"{display_name(c.left)} vs {display_name(c.right)}"
    if needed > _PRACTICAL * c.n_perturbations:
        return (
            f"{pair}: a difference of {c.mean_diff:+.3f} is small against the spread between "
            f"perturbations seen here (sd {spread:.3f}): an interval clear of 0 would need "
            f"about {needed} held-out perturbations, over {_PRACTICAL} times the "
            f"{c.n_perturbations} here; read it as no difference."
        )
    return (
        f"{pair}: at the spread between "
        f"perturbations seen here (sd {spread:.3f}), a difference of {c.mean_diff:+.3f} "
        f"needs about {needed} held-out perturbations "
        f"for its interval to clear 0 ({c.n_perturbations} here); more seeds only average "
        "within a perturbation."
    )


def _partial_notes(comparisons: list[Comparison]) -> list[str]:
    """One note per baseline defined on only some held-out perturbations."""
    seen: dict[str, tuple[int, int]] = {}
    for c in comparisons:
        if c.label.endswith(WHERE_DEFINED) and c.right not in seen:
            seen[c.right] = (c.n_perturbations, c.n_perturbations + c.n_dropped)
    return [
        f"Baseline {name} predicts {n} of the {total} held-out perturbations (it lacks what it "
        "needs for the others): it is compared with each model on those only and is not a "
        "candidate for the best baseline."
        for name, (n, total) in seen.items()
    ]


def _notes(agg: Aggregate, setting: str, metric: str, kind: str, verdict: SettingVerdict, planning):
    notes = []
    base, ceil = verdict.best_baseline, verdict.ceiling
    if base and ceil and higher_is_better(metric) and base.mean > ceil.mean:
        notes.append(_above_ceiling_note(base, ceil, metric))
    flat = agg.flat_metrics
    mine = (flat["setting"] == setting) & (flat["metric"] == metric) & (flat["kind"] == kind)
    if len(flat) and mine.any():
        notes.append(
            f"{metric} has the same value for every method on these data: it cannot separate them."
        )
    notes += planning
    notes += _unmeasured_note(agg.unmeasured_targets.get(setting))
    for group in agg.identical_models.get(setting, []):
        notes.append(
            f"{', '.join(display_name(g) for g in group)} have identical weights in at least one "
            "run (an RL stage kept its starting policy), so their rows agree there."
        )
    na = agg.not_applicable
    if len(na):
        na = na[(na["setting"] == setting) & (na["kind"] != ALL)]
        for method, part in na.groupby("method", sort=True):
            kinds = " or ".join(sorted(part["kind"]))
            notes.append(
                f"Baseline {method} applies to none of the held-out {kinds} perturbations "
                "(it predicts nothing for them) and is left out."
            )
    return notes


def _unmeasured_note(record: dict | None) -> list[str]:
    """Held-out singles whose target the data does not measure: a model knows only its name."""
    if not record or not record.get("unmeasured"):
        return []
    names, n = record["unmeasured"], int(record["n_singles"])
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return [
        f"The data does not measure the target gene of {len(names)} of the {n} held-out "
        f"singles ({shown}): a model trained on it knows those targets by name only, so "
        "beyond the average response it has nothing to go on there unless the prompts carry "
        "a gene table's neighbours."
    ]


def setting_verdicts(
    agg: Aggregate, *, metric: str | None = None, kind: str = ALL
) -> list[SettingVerdict]:
    """One verdict per setting on ``metric`` (default: the aggregate's headline) and ``kind``."""
    metric = metric or agg.headline
    best = best_baselines(agg.pooled)
    out = []
    for setting in agg.settings:
        pooled = agg.pooled[
            (agg.pooled["setting"] == setting)
            & (agg.pooled["kind"] == kind)
            & (agg.pooled["metric"] == metric)
        ]
        ceiling = _score(pooled, SPLIT_HALF + SPEARMAN_BROWN_SUFFIX) or _score(pooled, SPLIT_HALF)
        runs = agg.runs[agg.runs["setting"] == setting]
        verdict = SettingVerdict(
            setting=setting,
            metric=metric,
            kind=kind,
            simulated=bool(runs["simulated"].any()),
            best_model=_score(pooled, _best_model(pooled, metric)),
            best_baseline=_score(pooled, best.get((setting, kind, metric))),
            ceiling=ceiling,
            representation=_score(pooled, REPRESENTATION),
        )
        paired = agg.paired[
            (agg.paired["setting"] == setting)
            & (agg.paired["kind"] == kind)
            & (agg.paired["metric"] == metric)
        ]
        # RL vs SFT first, then models vs the best baseline
        planning: list[str] = []
        partial = paired["comparison"].str.endswith(WHERE_DEFINED)
        paired = paired.assign(
            _vs_base=paired["comparison"].str.contains("best baseline") | partial,
            _partial=partial,
        )
        for _, row in paired.sort_values("_vs_base", kind="stable").iterrows():
            # diff, low, high, n: read once for the sentence and the comparison
            numbers = (
                float(row["mean_diff"]),
                float(row["ci_low"]),
                float(row["ci_high"]),
                int(row["n_perturbations"]),
            )
            status, sentence = compare_sentence(
                row["left"],
                row["right"],
                *numbers,
                metric=metric,
                against_baseline=bool(row["_vs_base"]),
                where_defined=bool(row["_partial"]),
                confidence_level=agg.confidence_level,
            )
            comparison = Comparison(
                row["comparison"], row["left"], row["right"], *numbers,
                int(row["n_dropped"]), status, sentence,
            )  # fmt: skip
            verdict.comparisons.append(comparison)
            # aggregates written before the column have no spread: no planning note
            spread = float(row.get("sd_perturbations", math.nan))
            note = _planning_note(comparison, spread, metric, agg.confidence_level)
            planning += [note] if note else []
        planning += _partial_notes(verdict.comparisons)
        fit = is_fit_check(setting)
        verdict.notes = _notes(agg, setting, metric, kind, verdict, [] if fit else planning)
        out.append(_as_fit_check(verdict) if fit else verdict)
    return out


def _as_fit_check(verdict: SettingVerdict) -> SettingVerdict:
    """A ``[TRAIN prompts]`` setting's verdict worded as the fit check it is: the perturbations
    were trained (each baseline left them out), so nothing in it is held out or a result."""
    for c in verdict.comparisons:
        c.sentence = c.sentence.replace("held-out", "training")
    verdict.notes = [FIT_CHECK_NOTE] + [n.replace("held-out", "training") for n in verdict.notes]
    return verdict


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _ci(low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "-"
    return f"{_fmt(low)} to {_fmt(high)}"


def verdict_table(verdict: SettingVerdict) -> pd.DataFrame:
    """The verdict's table: best model, best baseline, ceilings, then the paired differences."""
    rows = []
    for role, score in (
        ("best model", verdict.best_model),
        ("best baseline", verdict.best_baseline),
        ("ceiling (split-half)", verdict.ceiling),
        ("ceiling (decoder)", verdict.representation),
    ):
        if score is not None:
            rows.append(
                (role, score.method, _fmt(score.mean), _ci(score.ci_low, score.ci_high),
                 score.n_perturbations)
            )  # fmt: skip
    for c in verdict.comparisons:
        rows.append(
            (f"difference ({c.status.replace('_', ' ')})", c.label,
             "-" if not math.isfinite(c.mean_diff) else f"{c.mean_diff:+.3f}",
             _ci(c.ci_low, c.ci_high), c.n_perturbations)
        )  # fmt: skip
    return pd.DataFrame(rows, columns=["", "method", verdict.metric, "95% CI", "perturbations"])


def verdict_markdown(verdicts: list[SettingVerdict]) -> str:
    """Markdown: per setting a heading, the table and the sentences."""
    lines = ["# Verdict", ""]
    for v in verdicts:
        lines += [
            f"## {v.setting}",
            "",
            verdict_table(v).to_markdown(index=False, disable_numparse=True),
            "",
        ]
        lines += [f"- {s}" for s in v.sentences] + [""]
    return "\n".join(lines)


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _table_json(verdict: SettingVerdict) -> dict:
    table = verdict_table(verdict)
    return {"columns": list(table.columns), "rows": table.values.tolist()}


def verdict_json(verdicts: list[SettingVerdict]) -> dict:
    """JSON-ready verdicts (NaN as ``null``), each with its ``sentences``."""
    return {
        "format": "cellrlhf.verdict",
        "version": 1,
        "reference_model": REFERENCE_MODEL,
        "settings": [
            _clean({**asdict(v), "sentences": v.sentences, "table": _table_json(v)})
            for v in verdicts
        ],
    }


def verdict_text(setting: str, metric: str, table: pd.DataFrame, sentences) -> list[str]:
    """Terminal lines of one setting's verdict: a heading, the table, the sentences."""
    lines = [f"{setting}: {metric}, 95% intervals over held-out perturbations"]
    if len(table):
        lines += ["  " + line for line in table.to_string(index=False).splitlines()]
    return lines + [f"  - {s}" for s in sentences]


def verdict_lines(path: str | os.PathLike, *, n_boot: int = 2000, seed: int = 0) -> list[str]:
    """The verdict of a run for the terminal: per setting its table and sentences.

    ``path`` is an aggregate directory (its ``verdict.json`` is read), an evaluation directory,
    or a run directory holding either (an aggregate is preferred; else every evaluation found
    is aggregated on the fly with ``n_boot`` and ``seed``). Without any, one line says so; an
    aggregation error is one line too.
    """
    from cellrlhf.evaluation.aggregate import aggregate_evaluations
    from cellrlhf.evaluation.aggregate_files import find_aggregate_dir, find_evaluation_dirs

    root = Path(path)
    found = find_aggregate_dir(root) if root.is_dir() else None
    if found is not None and (found / "verdict.json").is_file():
        payload = json.loads((found / "verdict.json").read_text())
        lines = []
        for s in payload["settings"]:
            saved = s.get("table") or {"rows": [], "columns": []}
            table = pd.DataFrame(saved["rows"], columns=saved["columns"])
            lines += verdict_text(s["setting"], s["metric"], table, s["sentences"])
        return lines
    evals = find_evaluation_dirs(root) if root.is_dir() else {}
    if not evals:
        return [f"No evaluation found under {root}: no verdict."]
    try:
        agg = aggregate_evaluations(evals, n_boot=n_boot, seed=seed)
    except (FileNotFoundError, ValueError) as err:
        return [f"No verdict: {err}"]
    lines = []
    for v in setting_verdicts(agg):
        lines += verdict_text(v.setting, v.metric, verdict_table(v), v.sentences)
    return lines
