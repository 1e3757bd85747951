"""Which policy to keep: best true held-out fidelity, among evaluations whose diversity held.

A reward model can be hacked and a programmatic reward can be gamed by collapse (every
completion the same signature: fidelity of the pseudo-bulk can still rise). So the kept policy
is chosen on the held-out perturbations' *true* fidelity, and only among evaluations whose
diversity stayed close to the SFT model's (measured before training, the baseline):

- eligible: fidelity is finite, the distinct-sentence fraction is at least
  ``min_distinct_ratio`` times the baseline's and the gene-token entropy at least
  ``min_entropy_ratio`` times the baseline's;
- better: eligible and fidelity above the best so far by more than ``min_delta``;
- stop: ``patience`` evaluations in a row without a better one.

The baseline itself is a candidate: if RL never beats the SFT model on held-out fidelity, the
SFT policy is what is kept, and the logs say so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

__all__ = [
    "FIDELITY_KEY",
    "SPECIFIC_KEY",
    "DISTINCT_KEY",
    "ENTROPY_KEY",
    "SELECTION_METRICS",
    "SelectionDecision",
    "BestPolicySelector",
    "resolve_selection_metric",
]

FIDELITY_KEY = "heldout/pearson_delta"
SPECIFIC_KEY = "heldout/pearson_specific"
SELECTION_METRICS = ("auto", "pearson_delta", "pearson_specific")


def resolve_selection_metric(choice: str, *, specific_weight: float, has_reference: bool) -> str:
    """The held-out metric key the kept policy is chosen on.

    ``auto``: ``pearson_specific`` (the change relative to the mean training change of the
    context) when the reward optimises it (``specific_weight > 0``) and every monitored prompt's
    context has training perturbations to take that mean over; otherwise ``pearson_delta``.

    Raises
    ------
    ValueError
        An unknown choice, or ``pearson_specific`` asked for where it is undefined.
    """
    if choice not in SELECTION_METRICS:
        raise ValueError(f"heldout_selection_metric={choice!r}; choose one of {SELECTION_METRICS}.")
    if choice == "pearson_specific" and not has_reference:
        raise ValueError(
            "heldout_selection_metric=pearson_specific, but a monitored prompt's cell context has "
            "no training perturbations (no mean training change to measure against); use "
            "pearson_delta or auto."
        )
    if choice == "pearson_specific" or (choice == "auto" and specific_weight > 0 and has_reference):
        return SPECIFIC_KEY
    return FIDELITY_KEY


DISTINCT_KEY = "heldout/distinct_fraction"
ENTROPY_KEY = "heldout/token_entropy"


@dataclass(frozen=True)
class SelectionDecision:
    """The verdict on one evaluation."""

    step: int
    fidelity: float
    eligible: bool
    improved: bool
    should_stop: bool
    reason: str


@dataclass
class BestPolicySelector:
    """Track the best eligible held-out fidelity and decide when to stop.

    Parameters
    ----------
    min_distinct_ratio, min_entropy_ratio
        Diversity gates, relative to the first evaluation (the baseline).
    patience
        Evaluations without improvement before stopping (``None``: never stop).
    min_delta
        Improvement needed to count as better.
    fidelity_key
        The metric the best policy is chosen on (:func:`resolve_selection_metric`).
    """

    min_distinct_ratio: float = 0.9
    min_entropy_ratio: float = 0.9
    patience: int | None = 5
    min_delta: float = 0.0
    fidelity_key: str = FIDELITY_KEY
    baseline: dict[str, float] | None = None
    best_step: int | None = None
    best_fidelity: float = -math.inf
    evaluations_since_best: int = 0
    decisions: list[SelectionDecision] = field(default_factory=list)

    def update(self, step: int, metrics: dict[str, float]) -> SelectionDecision:
        """Judge one evaluation (the first one becomes the diversity baseline)."""
        if self.baseline is None:
            self.baseline = {
                k: float(metrics.get(k, math.nan))
                for k in (self.fidelity_key, DISTINCT_KEY, ENTROPY_KEY)
            }
        fidelity = float(metrics.get(self.fidelity_key, math.nan))
        reasons = []
        if not math.isfinite(fidelity):
            reasons.append("held-out fidelity is undefined")
        for key, ratio in (
            (DISTINCT_KEY, self.min_distinct_ratio),
            (ENTROPY_KEY, self.min_entropy_ratio),
        ):
            value, base = float(metrics.get(key, math.nan)), self.baseline.get(key, math.nan)
            if math.isfinite(base) and not (math.isfinite(value) and value >= ratio * base):
                reasons.append(
                    f"{key.split('/')[-1]} {value:.3f} < {ratio:g} x baseline {base:.3f}"
                )
        eligible = not reasons
        improved = eligible and fidelity > self.best_fidelity + (
            self.min_delta if self.best_step is not None else -math.inf
        )
        if improved:
            self.best_step, self.best_fidelity = int(step), fidelity
            self.evaluations_since_best = 0
            reason = "best so far"
        else:
            self.evaluations_since_best += 1
            reason = "; ".join(reasons) if reasons else "no improvement"
        should_stop = self.patience is not None and self.evaluations_since_best >= self.patience
        if should_stop:
            reason += f"; {self.evaluations_since_best} evaluations without improvement: stop"
        decision = SelectionDecision(int(step), fidelity, eligible, improved, should_stop, reason)
        self.decisions.append(decision)
        return decision

    def to_dict(self) -> dict:
        """JSON-ready state (baseline, best step, every decision)."""
        return {
            "metric": self.fidelity_key,
            "min_distinct_ratio": self.min_distinct_ratio,
            "min_entropy_ratio": self.min_entropy_ratio,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "baseline": self.baseline,
            "best_step": self.best_step,
            "best_fidelity": self.best_fidelity if self.best_step is not None else None,
            "decisions": [asdict(d) for d in self.decisions],
        }
