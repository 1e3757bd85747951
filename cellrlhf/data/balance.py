"""Balanced sampling of cells by any ``obs`` column (cell context, data set, technology).

Large atlases are dominated by a few tissues, lines or technologies; a model trained on them
learns the majority. Like CancerGPT's sampling of under-represented tissues, :func:`balanced_sample`
draws the same number of cells from each group (up-sampling small groups with replacement when
asked), or interpolates between natural and uniform group frequencies with a temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["BalanceConfig", "balanced_sample", "STRATEGIES"]

STRATEGIES = ("none", "downsample", "upsample", "temperature")


@dataclass(frozen=True)
class BalanceConfig:
    """How to balance a cell sample (the ``balance:`` block of a task in a data config).

    Attributes
    ----------
    by
        ``obs`` column(s) defining the groups (standard or ``schema.extra`` columns).
    strategy
        ``"none"``: keep natural frequencies. ``"downsample"``: every group down to the smallest
        group (or ``per_group``). ``"upsample"``: every group to the largest (or ``per_group``),
        small groups repeated with replacement. ``"temperature"``: group ``g`` gets a share
        proportional to ``n_g ** temperature`` (1 = natural, 0 = uniform) of ``n_total`` cells.
    per_group
        Cells per group for down/upsample (default: smallest / largest group size).
    temperature
        Exponent for ``"temperature"``.
    n_total
        Total cells for ``"temperature"`` (default: the number of candidate cells).
    """

    by: tuple[str, ...] = ()
    strategy: str = "none"
    per_group: int | None = None
    temperature: float = 0.5
    n_total: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"balance.strategy={self.strategy!r}; choose one of {STRATEGIES}.")
        if self.strategy != "none" and not self.by:
            raise ValueError(
                f"balance.strategy={self.strategy!r} needs balance.by (obs column(s))."
            )
        if not 0.0 <= self.temperature <= 1.0:
            raise ValueError(f"balance.temperature must be in [0, 1], got {self.temperature}.")
        if self.per_group is not None and self.per_group < 1:
            raise ValueError("balance.per_group must be >= 1.")

    @classmethod
    def from_dict(cls, spec: dict | None) -> BalanceConfig:
        if not spec:
            return cls()
        known = {"by", "strategy", "per_group", "temperature", "n_total"}
        unknown = set(spec) - known
        if unknown:
            raise ValueError(
                f"unknown key(s) {sorted(unknown)} in balance; known: {sorted(known)}."
            )
        by = spec.get("by", ())
        by = (by,) if isinstance(by, str) else tuple(by)
        return cls(
            by=by,
            strategy=spec.get("strategy", "none" if not by else "downsample"),
            per_group=spec.get("per_group"),
            temperature=float(spec.get("temperature", 0.5)),
            n_total=spec.get("n_total"),
        )


def balanced_sample(
    obs: pd.DataFrame,
    config: BalanceConfig,
    *,
    candidates: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Row positions of a balanced sample of cells.

    Parameters
    ----------
    obs
        Cell metadata with the ``config.by`` columns.
    config
        The balancing rule.
    candidates
        Row positions to sample from (default: all rows).
    seed
        Seed; the same inputs and seed give the same positions.

    Returns
    -------
    Sorted int64 row positions; with ``"upsample"`` or ``"temperature"`` a position may repeat.
    """
    rows = (
        np.arange(len(obs), dtype=np.int64)
        if candidates is None
        else np.asarray(candidates, dtype=np.int64)
    )
    if config.strategy == "none" or len(rows) == 0:
        return np.sort(rows)
    missing = [c for c in config.by if c not in obs.columns]
    if missing:
        raise KeyError(
            f"balance.by column(s) {missing} not in the cell metadata; available: {list(obs.columns)}."
        )
    keys = obs.iloc[rows][list(config.by)].astype(str).agg("\x1f".join, axis=1).to_numpy()
    codes, labels = pd.factorize(pd.Series(keys, dtype=object), sort=True)
    sizes = np.bincount(codes, minlength=len(labels))
    rng = np.random.default_rng(seed)
    if config.strategy == "downsample":
        target = np.full(len(labels), config.per_group or int(sizes.min()))
    elif config.strategy == "upsample":
        target = np.full(len(labels), config.per_group or int(sizes.max()))
    else:  # temperature
        weights = sizes.astype(np.float64) ** config.temperature
        total = config.n_total or len(rows)
        target = np.floor(weights / weights.sum() * total).astype(np.int64)
        remainder = total - int(target.sum())
        if remainder > 0:  # largest fractional parts first, ties by group order
            fraction = weights / weights.sum() * total - target
            target[np.argsort(-fraction, kind="stable")[:remainder]] += 1
    chosen: list[np.ndarray] = []
    for group in range(len(labels)):
        members = rows[codes == group]
        want = int(target[group])
        if config.strategy == "downsample":
            want = min(want, len(members))
        if want <= len(members):
            chosen.append(rng.choice(members, size=want, replace=False))
        else:  # all members once, the rest drawn with replacement
            extra = rng.choice(members, size=want - len(members), replace=True)
            chosen.append(np.concatenate([members, extra]))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
