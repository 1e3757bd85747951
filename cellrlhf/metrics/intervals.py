"""Intervals over perturbations (percentile bootstrap; Student t for few), not cells or runs.

The unit of replication of a held-out evaluation is the perturbation: its cells, its cell
contexts, the seeds and the folds that scored it are not independent draws, so every row of one
perturbation (a *cluster*) moves together. Each function first averages the rows of a cluster
(over seeds, runs and cell contexts), then resamples the cluster means with replacement
(:func:`scipy.stats.bootstrap`, percentile method, seeded):

- :func:`bootstrap_mean`: the pooled mean of a metric and its interval;
- :func:`paired_difference`: ``left - right`` per (run, cell context, perturbation), averaged
  per perturbation, then bootstrapped over perturbations.

NaN handling is explicit: a row whose value is NaN (an undefined metric, e.g. a correlation of a
constant prediction, or a baseline that does not apply) is left out; a perturbation with no
defined row drops out of the estimate and is counted in :attr:`Interval.n_dropped`. With fewer
than two perturbations there is no interval (``low`` and ``high`` are NaN).

Few perturbations: a percentile bootstrap over ``n`` cluster means can only recombine ``n``
values and its intervals are too narrow for small ``n`` (with 4 perturbations a nominal 95%
interval covers far less). Below :data:`SMALL_SAMPLE` perturbations the interval is therefore
Student's t interval of the cluster means (``mean +- t_{n-1} * sd / sqrt(n)``), which is exact
for normal cluster means and wider where it should be. Example: cluster means ``[1, 2, 3, 4]``
give ``2.5`` with the 95% interval ``0.446 to 4.554`` (t_3 = 3.182, se = 0.645).

Worked example: per-perturbation differences ``[0.1, 0.1, 0.1]`` give the interval
``[0.1, 0.1]`` (every resample has the same mean); two seeds of the same perturbation that agree
give exactly the interval of one seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = [
    "CONFIDENCE_LEVEL",
    "SMALL_SAMPLE",
    "Interval",
    "bootstrap_mean",
    "cluster_means",
    "paired_difference",
    "percentile_interval",
    "perturbations_needed",
]

CONFIDENCE_LEVEL = 0.95
# below this many clusters the interval is Student's t, not the percentile bootstrap
SMALL_SAMPLE = 10


@dataclass(frozen=True)
class Interval:
    """A mean over perturbations and its percentile bootstrap interval.

    Attributes
    ----------
    estimate
        Mean of the per-perturbation means (NaN without any defined perturbation).
    low, high
        Interval bounds (NaN with fewer than two perturbations).
    n_clusters
        Perturbations with a defined value (those averaged).
    n_dropped
        Perturbations present but without a defined value (left out).
    confidence_level
        Coverage of the interval (0.95: a 95% interval).
    spread
        Standard deviation of the per-perturbation means (``ddof=1``; NaN below two): what the
        interval's width comes from, and what :func:`perturbations_needed` plans with.
    """

    estimate: float
    low: float
    high: float
    n_clusters: int
    n_dropped: int = 0
    confidence_level: float = CONFIDENCE_LEVEL
    spread: float = float("nan")

    @property
    def defined(self) -> bool:
        """Whether any perturbation had a defined value."""
        return self.n_clusters > 0

    def to_dict(self) -> dict:
        return asdict(self)


def percentile_interval(
    values: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 2000,
    confidence_level: float = CONFIDENCE_LEVEL,
    seed: int = 0,
    bounds: tuple[float, float] | None = None,
) -> tuple[float, float, float]:
    """``(mean, low, high)`` of independent values by the percentile bootstrap.

    With fewer than :data:`SMALL_SAMPLE` values the interval is Student's t interval instead
    (the percentile bootstrap is too narrow there; see the module doc).

    Parameters
    ----------
    values
        One value per cluster (e.g. per perturbation), all finite.
    n_boot
        Bootstrap resamples.
    confidence_level
        Coverage (0.95).
    seed
        Seed of the resampling: the same values and seed give the same interval.
    bounds
        The metric's range (e.g. ``(0, 1)`` for an accuracy): a t interval is clipped to it.

    Returns
    -------
    The mean and the interval; ``(nan, nan, nan)`` without values, ``(mean, nan, nan)`` with one.
    """
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or not np.isfinite(x).all():
        raise ValueError("percentile_interval needs a 1-D array of finite values (drop NaN first).")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}.")
    if len(x) == 0:
        return np.nan, np.nan, np.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, np.nan, np.nan
    if np.ptp(x) == 0:  # every resample has the same mean
        return mean, mean, mean
    if len(x) < SMALL_SAMPLE:
        from scipy.stats import sem, t

        scale = float(sem(x))
        if not scale > 0:  # spread below float resolution (subnormal differences)
            return mean, mean, mean
        low, high = t.interval(confidence_level, len(x) - 1, loc=mean, scale=scale)
        if bounds is not None:
            low, high = max(low, bounds[0]), min(high, bounds[1])
        return mean, float(low), float(high)
    result = bootstrap(
        (x,),
        np.mean,
        n_resamples=int(n_boot),
        confidence_level=confidence_level,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return mean, float(ci.low), float(ci.high)


def cluster_means(values, clusters) -> tuple[pd.Series, int]:
    """Mean of the defined values of every cluster, and how many clusters had none.

    Parameters
    ----------
    values
        One value per row (NaN: undefined).
    clusters
        The cluster (perturbation) of every row.

    Returns
    -------
    ``(means, n_dropped)``: means indexed by cluster label (sorted), clusters without any defined
    value left out and counted.
    """
    frame = pd.DataFrame(
        {"value": np.asarray(values, dtype=np.float64), "cluster": np.asarray(clusters)}
    )
    if frame.empty:
        return pd.Series(dtype=np.float64), 0
    all_clusters = frame["cluster"].nunique()
    means = frame.dropna(subset=["value"]).groupby("cluster", sort=True)["value"].mean()
    return means, int(all_clusters - len(means))


def bootstrap_mean(
    values,
    clusters,
    *,
    n_boot: int = 2000,
    confidence_level: float = CONFIDENCE_LEVEL,
    seed: int = 0,
    bounds: tuple[float, float] | None = None,
) -> Interval:
    """Pooled mean of a metric over clusters (perturbations) with its bootstrap interval.

    Rows of one cluster (its seeds, folds, cell contexts) are averaged first, so duplicated runs
    do not narrow the interval.
    """
    means, dropped = cluster_means(values, clusters)
    est, low, high = percentile_interval(
        means.to_numpy(),
        n_boot=n_boot,
        confidence_level=confidence_level,
        seed=seed,
        bounds=bounds,
    )
    spread = float(means.std(ddof=1)) if len(means) > 1 else float("nan")
    return Interval(est, low, high, len(means), dropped, confidence_level, spread)


def perturbations_needed(
    difference: float,
    spread: float,
    *,
    confidence_level: float = CONFIDENCE_LEVEL,
    max_n: int = 10_000,
) -> int | None:
    """How many perturbations an interval needs to exclude 0 for a difference of this size.

    The smallest ``n >= 2`` whose interval half-width at this ``spread`` (standard deviation of
    the per-perturbation values) is below ``|difference|``: ``t_{n-1} * spread / sqrt(n)`` below
    :data:`SMALL_SAMPLE` perturbations (the interval used there), the normal quantile from there
    on (what the percentile bootstrap approaches). A planning figure for a paired difference that
    did not reach a verdict: the unit of the interval is the perturbation, so more held-out
    perturbations narrow it and more seeds only average within each one.

    Example: a difference of +0.043 whose perturbations spread with sd 0.040 needs 6
    (``t_5 * 0.040 / sqrt(6) = 0.042 < 0.043``; with 5, ``t_4 * 0.040 / sqrt(5) = 0.050``).

    Returns
    -------
    ``n``, or ``None`` when the difference is 0 or undefined, the spread is undefined, or more
    than ``max_n`` perturbations would be needed.
    """
    from scipy.stats import norm, t

    if not (np.isfinite(difference) and np.isfinite(spread)) or difference == 0 or spread < 0:
        return None
    if spread == 0:
        return 2
    tail = 0.5 + confidence_level / 2
    target = abs(difference) / spread
    for n in range(2, SMALL_SAMPLE):
        if t.ppf(tail, n - 1) / np.sqrt(n) < target:
            return n
    n = max(SMALL_SAMPLE, int(np.ceil((norm.ppf(tail) / target) ** 2)))
    while norm.ppf(tail) / np.sqrt(n) >= target:  # float edge at the boundary
        n += 1
    return n if n <= max_n else None


def paired_difference(
    table: pd.DataFrame,
    left: str,
    right: str,
    *,
    value: str,
    method: str = "method",
    cluster: str = "perturbation",
    within: Sequence[str] = ("run", "cell_context"),
    n_boot: int = 2000,
    confidence_level: float = CONFIDENCE_LEVEL,
    seed: int = 0,
) -> Interval:
    """``left - right`` on ``value``, paired per row, averaged per cluster, bootstrapped.

    Parameters
    ----------
    table
        Long table: one row per (method, *within, cluster) with the ``value`` column.
    left, right
        The two methods (values of the ``method`` column).
    value
        The metric column.
    within
        Columns that, with ``cluster``, identify the rows to pair (the run, i.e. fold and seed,
        and the cell context): a model of seed 1 is compared with SFT of seed 1 on the same
        perturbation in the same context.

    Returns
    -------
    The mean paired difference over perturbations; perturbations where either side is
    undefined in every pair drop out and are counted in ``n_dropped``.
    """
    keys = [*within, cluster]
    missing = [c for c in (method, value, *keys) if c not in table.columns]
    if missing:
        raise ValueError(f"paired_difference: the table lacks column(s) {missing}.")
    sides = []
    for name in (left, right):
        part = table.loc[table[method] == name, [*keys, value]]
        if part.duplicated(keys).any():
            raise ValueError(
                f"paired_difference: method {name!r} has several rows per {keys}; give each "
                "run its own label."
            )
        sides.append(part.set_index(keys)[value])
    pairs = pd.concat(sides, axis=1, keys=["left", "right"], join="outer")
    diff = pairs["left"] - pairs["right"]
    clusters = pairs.index.get_level_values(cluster)
    return bootstrap_mean(
        diff.to_numpy(), clusters, n_boot=n_boot, confidence_level=confidence_level, seed=seed
    )
