"""K-fold rotation of held-out units (single perturbations, combinations, or pairs).

The eligible units of a split kind are partitioned once per ``split.seed`` into ``split.folds``
disjoint folds of near-equal size; fold ``i`` holds its units out for test, and every unit is
test in exactly one fold. The partition does not depend on the fold asked for, so the K builds
of one config rotate the same partition.

Units that belong together (the (perturbation, cell context) pairs of one perturbation) can be
kept apart: :func:`fold_partition` with ``group_of`` spreads each group's units over as many
folds as possible, so a fold never holds out every context of a perturbation when it has more
contexts than the fold has of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cellrlhf.data.split_config import SplitError

__all__ = ["FOLD_SALT", "check_folds", "fold_partition"]

FOLD_SALT = 0xF01D5


def check_folds(folds: int, n_units: int, what: str) -> None:
    """Raise :class:`SplitError` unless ``n_units`` can fill ``folds`` folds (>= 1 unit each)."""
    if folds > n_units:
        raise SplitError(
            f"split.folds={folds} but only {n_units} {what} are eligible to be held out; every "
            f"fold needs at least one. Use split.folds <= {n_units}."
        )


def fold_partition(
    units: Sequence[str],
    folds: int,
    seed: int,
    *,
    group_of: Callable[[str], str] | None = None,
    what: str = "units",
    accept: Callable[[list[str]], bool] | None = None,
    max_attempts: int = 100,
) -> list[list[str]]:
    """Partition ``units`` into ``folds`` seeded folds of near-equal size.

    Parameters
    ----------
    units
        Distinct unit names (order does not matter: they are sorted first).
    folds
        Number of folds (>= 2, <= ``len(units)``).
    seed
        Partition seed (``split.seed``).
    group_of
        Optional unit -> group name. Units of one group are dealt to consecutive folds
        (round robin over a seeded order of groups, then of units within a group), so a group
        with ``m <= folds`` units has each in a different fold, and a larger group has at most
        ``ceil(m / folds)`` units in any fold.
    what
        What the units are, for error messages.
    accept
        Optional test of one fold's units; partitions are redrawn (seeded, up to
        ``max_attempts``) until every fold passes, else :class:`SplitError`.
    max_attempts
        How many partitions to try with ``accept``.

    Returns
    -------
    ``folds`` sorted lists; their union is ``units`` and they are pairwise disjoint; sizes differ
    by at most one.
    """
    ordered = sorted(str(u) for u in units)
    if len(set(ordered)) != len(ordered):
        raise SplitError("fold_partition needs distinct units.")
    if folds < 2:
        raise SplitError(f"split.folds must be >= 2, got {folds}.")
    check_folds(folds, len(ordered), what)
    for attempt in range(max_attempts if accept is not None else 1):
        words = [seed, FOLD_SALT] + ([attempt] if attempt else [])
        rng = np.random.default_rng(np.random.SeedSequence(words))
        partition = _deal(ordered, folds, rng, group_of)
        if accept is None or all(accept(fold) for fold in partition):
            return partition
    raise SplitError(
        f"no partition of the {len(ordered)} {what} into {folds} folds (of {max_attempts} seeded "
        "tries) keeps every held-out unit's constraint; try another split.folds or split.seed."
    )


def _deal(ordered: list[str], folds: int, rng, group_of) -> list[list[str]]:
    """Round-robin dealing of a seeded order of ``ordered`` (grouped units consecutive)."""
    if group_of is None:
        sequence = [ordered[i] for i in rng.permutation(len(ordered))]
    else:
        by_group: dict[str, list[str]] = {}
        for unit in ordered:
            by_group.setdefault(str(group_of(unit)), []).append(unit)
        names = sorted(by_group)
        sequence = []
        for g in rng.permutation(len(names)):
            members = by_group[names[g]]
            sequence += [members[i] for i in rng.permutation(len(members))]
    out: list[list[str]] = [[] for _ in range(folds)]
    for position, unit in enumerate(sequence):
        out[position % folds].append(unit)
    return [sorted(fold) for fold in out]
