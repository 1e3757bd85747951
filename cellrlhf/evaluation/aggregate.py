"""Aggregate evaluations over folds and seeds: per-fold tables, pooled means with intervals,
paired differences with intervals, and the verdict.

Python API::

    from cellrlhf.evaluation.aggregate import aggregate_evaluations, write_aggregate

    agg = aggregate_evaluations({"fold0_seed0": "runs/x/f0_s0/eval",
                                 "fold1_seed0": "runs/x/f1_s0/eval"}, n_boot=2000, seed=0)
    write_aggregate(agg, "runs/x/aggregate")

Tables (long format, one metric per row; see :func:`write_aggregate` for the files):

- ``per_fold``: ``setting, fold, seed, run, method, method_type, cell_context ("all"), kind,
  metric, value, n_perturbations``: each run's mean over (cell context, perturbation);
- ``pooled``: ``setting, method, method_type, kind, metric, mean, ci_low, ci_high,
  n_perturbations, n_runs``: the mean over perturbations of every run of the setting (each
  perturbation's rows averaged first) with a 95% percentile bootstrap interval that resamples
  perturbations (held-out (perturbation, context) pairs under ``unseen_pair``;
  :mod:`cellrlhf.metrics.intervals`). The split-half ceiling gets a
  ``split_half (Spearman-Brown)`` row (its mean and bounds at full depth) on the correlation-like
  metrics;
- ``paired``: ``setting, kind, metric, comparison, left, right, mean_diff, ci_low, ci_high,
  n_perturbations, n_dropped, sd_perturbations`` (the spread of the per-perturbation
  differences, which sets the interval's width): every model other than ``sft`` minus ``sft`` (``"grpo - sft"``),
  and every model minus the best baseline of that kind and metric (``"sft - best baseline
  (mean)"``: the baseline with the best pooled mean among those defined on the most
  perturbations), then every model minus each baseline defined on only some of them (``"sft -
  additive (where defined)"``: additive for combinations with an unmeasured single), on the
  perturbations it predicts. Differences are paired per (run, cell context, perturbation),
  averaged per perturbation, then bootstrapped.

One evaluation directory works too: the intervals then resample that run's perturbations.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cellrlhf.evaluation.aggregate_inputs import EvaluationRun, read_evaluation_runs
from cellrlhf.evaluation.model_dirs import GRAMMAR_SUFFIX
from cellrlhf.metrics.intervals import CONFIDENCE_LEVEL, bootstrap_mean, paired_difference

__all__ = [
    "Aggregate",
    "DEFAULT_METRICS",
    "HEADLINE_METRICS",
    "REFERENCE_MODEL",
    "aggregate_evaluations",
    "aggregate_runs",
    "WHERE_DEFINED",
    "best_baselines",
    "higher_is_better",
    "partial_baselines",
]

# the label suffix of a comparison with a baseline defined on only some perturbations
WHERE_DEFINED = " (where defined)"

# aggregated by default, those present (the first present of HEADLINE_METRICS leads)
DEFAULT_METRICS = (
    "pearson_specific",
    "pearson_specific_top20",
    "pearson_delta",
    "pearson_delta_top20",
    "discrimination_score_l1",
    "overlap_at_N",
    "mae",
)
HEADLINE_METRICS = ("pearson_specific", "pearson_delta")
REFERENCE_MODEL = "sft"
ALL = "all"
SPLIT_HALF = "split_half"
SPEARMAN_BROWN_SUFFIX = " (Spearman-Brown)"
_LOWER_IS_BETTER = ("mae", "mse")


def higher_is_better(metric: str) -> bool:
    """``False`` for error metrics (``mae*``, ``mse*``), ``True`` for correlations and scores."""
    return not metric.startswith(_LOWER_IS_BETTER)


@dataclass
class Aggregate:
    """The aggregate of several evaluations (see the module docstring for the tables).

    Attributes
    ----------
    runs
        One row per evaluation: ``label, path, setting, dataset, split_kind, fold, seed,
        simulated``.
    not_applicable
        ``setting, method, kind``: baselines that were asked for but predict none of the
        held-out perturbations of that kind (``additive`` for singles).
    flat_metrics
        ``setting, kind, metric, value``: metrics on which every model and baseline with a
        defined value (at least one of each) has the same pooled mean: they cannot separate
        methods on these data.
    identical_models
        Setting -> groups of models with identical weights (in any run).
    unmeasured_targets
        Setting (``unseen_single`` only) -> ``{"n_singles": n, "unmeasured": [...]}``: the
        held-out singles whose target gene the data does not measure (evaluations that record
        ``target_measured``), about which a model knows nothing but the name.
    """

    runs: pd.DataFrame
    per_fold: pd.DataFrame
    pooled: pd.DataFrame
    paired: pd.DataFrame
    not_applicable: pd.DataFrame
    flat_metrics: pd.DataFrame
    metrics: tuple[str, ...]
    headline: str
    identical_models: dict[str, list[list[str]]] = field(default_factory=dict)
    unmeasured_targets: dict[str, dict] = field(default_factory=dict)
    n_boot: int = 2000
    seed: int = 0
    confidence_level: float = CONFIDENCE_LEVEL

    @property
    def settings(self) -> list[str]:
        return list(dict.fromkeys(self.runs["setting"]))

    @property
    def simulated(self) -> bool:
        return bool(self.runs["simulated"].any()) if len(self.runs) else False


def _long_rows(runs: Sequence[EvaluationRun], metrics: Sequence[str]) -> pd.DataFrame:
    """Every run's per-perturbation rows, one metric per row, with run coordinates."""
    frames = []
    for run in runs:
        present = [m for m in metrics if m in run.metrics.columns]
        frame = run.metrics.melt(
            id_vars=["method", "method_type", "cell_context", "perturbation", "kind"],
            value_vars=present,
            var_name="metric",
            value_name="value",
        )
        frame = frame.assign(setting=run.setting, run=run.label, fold=run.fold, seed=run.seed)
        frames.append(frame.assign(unit=_held_out_units(frame, run.split_kind)))
    rows = pd.concat(frames, ignore_index=True)
    rows["value"] = pd.to_numeric(rows["value"], errors="coerce").astype(np.float64)
    return rows


def _held_out_units(frame: pd.DataFrame, split_kind: str) -> pd.Series:
    """What the intervals resample: the held-out (perturbation, context) pair under
    ``unseen_pair`` (each is test in its own fold), else the perturbation (a held-out target is
    held out in every context, so its contexts are one unit)."""
    if split_kind == "unseen_pair":
        return frame["perturbation"].astype(str) + "@" + frame["cell_context"].astype(str)
    return frame["perturbation"].astype(str)


def _with_kind_all(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows once under ``kind == "all"`` and once under their own kind."""
    return pd.concat([rows.assign(kind=ALL), rows], ignore_index=True)


def _spearman_brown_rows(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``split_half (Spearman-Brown)`` rows: the split-half values mapped to full depth."""
    from cellrlhf.evaluation.scoring import is_correlation_metric, spearman_brown

    rows = table[
        (table["method"] == SPLIT_HALF) & table["metric"].map(is_correlation_metric)
    ].copy()
    for col in columns:
        rows[col] = spearman_brown(rows[col].to_numpy(dtype=np.float64))
    rows["method"] = SPLIT_HALF + SPEARMAN_BROWN_SUFFIX
    return rows


def _per_fold(rows: pd.DataFrame) -> pd.DataFrame:
    keys = ["setting", "fold", "seed", "run", "method", "method_type", "kind", "metric"]
    grouped = _with_kind_all(rows).groupby(keys, sort=False)["value"]
    table = grouped.agg(value="mean", n_perturbations="count").reset_index()
    table = pd.concat([table, _spearman_brown_rows(table, ["value"])], ignore_index=True)
    table.insert(6, "cell_context", ALL)
    return table.sort_values(["setting", "fold", "seed"], kind="stable").reset_index(drop=True)


def _pooled(rows: pd.DataFrame, n_boot: int, seed: int, level: float) -> pd.DataFrame:
    from cellrlhf.evaluation.scoring import is_correlation_metric

    out = []
    keys = ["setting", "method", "method_type", "kind", "metric"]
    for key, part in _with_kind_all(rows).groupby(keys, sort=False):
        iv = bootstrap_mean(
            part["value"],
            part["unit"],
            n_boot=n_boot,
            confidence_level=level,
            seed=seed,
            bounds=(-1.0, 1.0) if is_correlation_metric(key[-1]) else None,
        )
        defined_runs = part.dropna(subset=["value"])["run"].nunique()
        out.append((*key, iv.estimate, iv.low, iv.high, iv.n_clusters, iv.n_dropped, defined_runs))
    columns = [*keys, "mean", "ci_low", "ci_high", "n_perturbations", "n_dropped", "n_runs"]
    table = pd.DataFrame(out, columns=columns)
    return pd.concat(
        [table, _spearman_brown_rows(table, ["mean", "ci_low", "ci_high"])], ignore_index=True
    )


def _defined_baselines(pooled: pd.DataFrame):
    """``((setting, kind, metric), rows)`` of the baselines defined on some perturbation."""
    base = pooled[(pooled["method_type"] == "baseline") & (pooled["n_perturbations"] > 0)]
    return base.groupby(["setting", "kind", "metric"], sort=False)


def best_baselines(pooled: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """``(setting, kind, metric) -> baseline`` with the best pooled mean among the baselines
    defined on the most perturbations: one that predicts only some (``additive`` for
    combinations with an unmeasured single) is never chosen on fewer, other perturbations
    (:func:`partial_baselines`)."""
    best: dict[tuple[str, str, str], str] = {}
    for (setting, kind, metric), part in _defined_baselines(pooled):
        part = part[part["n_perturbations"] == part["n_perturbations"].max()]
        values = part["mean"].to_numpy(dtype=np.float64)
        if not np.isfinite(values).any():
            continue
        pick = np.nanargmax(values) if higher_is_better(metric) else np.nanargmin(values)
        best[(setting, kind, metric)] = str(part["method"].iloc[int(pick)])
    return best


def partial_baselines(pooled: pd.DataFrame) -> dict[tuple[str, str, str], list[str]]:
    """``(setting, kind, metric) -> baselines`` defined on fewer perturbations than the most
    any baseline of that setting, kind and metric is defined on; the models are compared with
    each where it is defined (``"sft - additive (where defined)"``)."""
    partial: dict[tuple[str, str, str], list[str]] = {}
    for key, part in _defined_baselines(pooled):
        fewer = part[part["n_perturbations"] < part["n_perturbations"].max()]
        if not fewer.empty:
            partial[key] = [str(m) for m in fewer["method"]]
    return partial


def _models(rows: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(rows.loc[rows["method_type"] == "model", "method"]))


def _comparisons(
    models: Sequence[str],
    baseline: str | None,
    under_grammar: set[str] | None = None,
    partial: Sequence[str] = (),
) -> list[tuple[str, str, str]]:
    """``(label, left, right)``: RL models minus SFT, then the models sampled under the cell
    grammar (``under_grammar``; ``None``: not recorded, every model) minus SFT under the grammar
    (``sft_grammar``, where evaluated: like with like for constrained policies), then every
    model minus the best baseline, then minus each ``partial`` baseline where it is defined."""
    pairs = []
    grammar_reference = REFERENCE_MODEL + GRAMMAR_SUFFIX
    for reference in (REFERENCE_MODEL, grammar_reference):
        if reference in models:
            pairs += [
                (f"{m} - {reference}", m, reference)
                for m in models
                if m not in (REFERENCE_MODEL, reference)
                and (reference != grammar_reference or under_grammar is None or m in under_grammar)
            ]
    if baseline is not None:
        pairs += [(f"{m} - best baseline ({baseline})", m, baseline) for m in models]
    for other in partial:
        pairs += [(f"{m} - {other}{WHERE_DEFINED}", m, other) for m in models]
    return pairs


def _under_grammar(runs: Sequence[EvaluationRun]) -> set[str] | None:
    """Models some run sampled under the cell grammar (``validity.constrained`` of its
    manifest); ``None`` when no run records how its models were sampled."""
    sampled: dict[str, bool] = {}
    for run in runs:
        for name, record in (run.manifest.get("models") or {}).items():
            validity = (record or {}).get("validity") or {}
            if "constrained" in validity:
                sampled[name] = sampled.get(name, False) or bool(validity["constrained"])
    return {name for name, constrained in sampled.items() if constrained} if sampled else None


def _paired(rows, pooled, n_boot: int, seed: int, level: float, under_grammar) -> pd.DataFrame:
    best, partial = best_baselines(pooled), partial_baselines(pooled)
    out = []
    for key, part in _with_kind_all(rows).groupby(["setting", "kind", "metric"], sort=False):
        setting, kind, metric = key
        models, baseline = _models(part), best.get(key)
        for label, left, right in _comparisons(
            models, baseline, under_grammar, partial.get(key, ())
        ):
            iv = paired_difference(
                part, left, right, value="value", cluster="unit", n_boot=n_boot,
                confidence_level=level, seed=seed,
            )  # fmt: skip
            out.append(
                (setting, kind, metric, label, left, right, iv.estimate, iv.low, iv.high)
                + (iv.n_clusters, iv.n_dropped, iv.spread)
            )
    columns = ["setting", "kind", "metric", "comparison", "left", "right", "mean_diff"]
    columns += ["ci_low", "ci_high", "n_perturbations", "n_dropped", "sd_perturbations"]
    return pd.DataFrame(out, columns=columns)


def _not_applicable(runs: Sequence[EvaluationRun]) -> pd.DataFrame:
    """Baselines asked for that predict none of the held-out perturbations of a kind: no row of
    that kind, or rows whose every metric is undefined (any metric, not only those aggregated:
    ``control`` is undefined on correlations of the change but defined on ``mae``)."""
    counts = {"n_pred", "n_real", "de_n_real", "de_n_pred"}
    out = []
    for setting in dict.fromkeys(r.setting for r in runs):
        mine = [r for r in runs if r.setting == setting]
        frames = []
        for r in mine:
            values = r.metrics.select_dtypes("number").drop(columns=counts, errors="ignore")
            frames.append(r.metrics[["method", "method_type", "kind"]][values.notna().any(axis=1)])
        defined = pd.concat(frames, ignore_index=True)
        asked = {b for r in mine for b in r.baselines}
        asked |= {
            m for r in mine for m in r.metrics.loc[r.metrics["method_type"] == "baseline", "method"]
        }
        kinds = sorted({k for r in mine for k in r.metrics["kind"]})
        for kind in kinds:
            present = set(defined.loc[defined["kind"] == kind, "method"])
            out += [(setting, b, kind) for b in sorted(asked - present)]
    return pd.DataFrame(out, columns=["setting", "method", "kind"])


def _flat_metrics(pooled: pd.DataFrame, tol: float = 1e-9) -> pd.DataFrame:
    """Metrics whose pooled mean is the same for every model and baseline that has one (at
    least one of each defined): they cannot separate methods on these data."""
    methods = pooled[(pooled["method_type"] != "ceiling") & pooled["mean"].notna()]
    out = []
    for (setting, kind, metric), part in methods.groupby(["setting", "kind", "metric"]):
        if not {"model", "baseline"} <= set(part["method_type"]):
            continue
        values = part["mean"].to_numpy(dtype=np.float64)
        if np.ptp(values) <= tol + 1e-6 * np.abs(values).max():
            out.append((setting, kind, metric, float(values[0])))
    return pd.DataFrame(out, columns=["setting", "kind", "metric", "value"])


def _resolve_metrics(runs: Sequence[EvaluationRun], metrics: Sequence[str] | None):
    present = set().union(*(set(r.metrics.columns) for r in runs))
    # a headline defined somewhere: pearson_specific is NaN everywhere when no context trained
    # a perturbation (one drug held out per patient), and pearson_delta then leads
    defined = set().union(*(set(r.metrics.columns[r.metrics.notna().any()]) for r in runs))
    if metrics is None:
        chosen = [m for m in DEFAULT_METRICS if m in present]
        first = chosen[0] if chosen else ""
        headline = next((m for m in HEADLINE_METRICS if m in defined), first)
    else:
        chosen, headline = list(dict.fromkeys(metrics)), metrics[0] if metrics else ""
        missing = [m for m in chosen if m not in present]
        if missing:
            numeric = sorted(c for r in runs for c in r.metrics.select_dtypes("number").columns)
            raise ValueError(
                f"metric(s) {missing} are in none of the evaluations; available: "
                f"{sorted(set(numeric))}."
            )
    if not chosen:
        raise ValueError(
            f"the evaluations have none of the metrics {list(DEFAULT_METRICS)}; name one with "
            "--metric."
        )
    if headline in chosen:
        chosen.remove(headline)
    return (headline, *chosen), headline


def _unmeasured_targets(runs: Sequence[EvaluationRun]) -> dict[str, dict]:
    """Per ``unseen_single`` setting: how many held-out singles, and which of them name a target
    the data does not measure (the ``target_measured`` column of ``metrics.csv``)."""
    singles: dict[str, dict[str, bool]] = {}
    for run in runs:
        table = run.metrics
        if run.split_kind != "unseen_single" or "target_measured" not in table.columns:
            continue
        rows = table[table["kind"] == "single"].drop_duplicates("perturbation")
        measured = rows["target_measured"].astype(str).str.lower() == "true"
        seen = singles.setdefault(run.setting, {})
        seen.update(zip(rows["perturbation"].astype(str), measured, strict=True))
    return {
        setting: {
            "n_singles": len(seen),
            "unmeasured": sorted(p for p, ok in seen.items() if not ok),
        }
        for setting, seen in singles.items()
    }


def aggregate_runs(
    runs: Sequence[EvaluationRun],
    *,
    metrics: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    confidence_level: float = CONFIDENCE_LEVEL,
) -> Aggregate:
    """:func:`aggregate_evaluations` on runs already read."""
    chosen, headline = _resolve_metrics(runs, metrics)
    rows = _long_rows(runs, chosen)
    pooled = _pooled(rows, n_boot, seed, confidence_level)
    identical: dict[str, list[list[str]]] = {}
    for run in runs:
        groups = identical.setdefault(run.setting, [])
        groups += [g for g in run.identical_models if g not in groups]
    run_table = pd.DataFrame(
        [
            (r.label, str(r.path), r.setting, r.dataset, r.split_kind, r.fold, r.seed, r.simulated)
            for r in runs
        ],
        columns=["label", "path", "setting", "dataset", "split_kind", "fold", "seed", "simulated"],
    )
    return Aggregate(
        runs=run_table,
        per_fold=_per_fold(rows),
        pooled=pooled,
        paired=_paired(rows, pooled, n_boot, seed, confidence_level, _under_grammar(runs)),
        not_applicable=_not_applicable(runs),
        flat_metrics=_flat_metrics(pooled),
        metrics=chosen,
        headline=headline,
        identical_models=identical,
        unmeasured_targets=_unmeasured_targets(runs),
        n_boot=int(n_boot),
        seed=int(seed),
        confidence_level=float(confidence_level),
    )


def aggregate_evaluations(
    evals: Mapping[str, str | os.PathLike],
    *,
    metrics: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    confidence_level: float = CONFIDENCE_LEVEL,
) -> Aggregate:
    """Read evaluation directories and aggregate them per setting.

    Parameters
    ----------
    evals
        Label -> evaluation directory (``cellrlhf evaluate --out``). Labels such as
        ``fold0_seed1`` give fold and seed where the manifests do not record them.
    metrics
        Metrics to aggregate; the first is the headline of the verdict. Default: those of
        :data:`DEFAULT_METRICS` present, led by ``pearson_specific`` (else ``pearson_delta``).
    n_boot
        Bootstrap resamples per interval.
    seed
        Seed of every bootstrap (the same inputs and seed give the same intervals).
    confidence_level
        Coverage of the intervals.

    Raises
    ------
    FileNotFoundError, ValueError
        A directory is missing or not an evaluation; two runs share setting, fold and seed; a
        named metric is in none of them.
    """
    return aggregate_runs(
        read_evaluation_runs(evals),
        metrics=metrics,
        n_boot=n_boot,
        seed=seed,
        confidence_level=confidence_level,
    )
