"""Train / validation / test splits that answer real questions, without leakage.

Split kinds
-----------
``random_cells``
    Cells drawn at random within every (perturbation, cell context) group: can the model
    reproduce responses it was trained on, on new cells? Controls are split too.
``unseen_single``
    Held-out single perturbations: every cell of a test single is in test. A combination that
    contains a test target is excluded (``combos_with_test_targets="exclude"``, default) or put in
    test (``"test"``), so no training example ever names a test target.
``unseen_combo``
    Held-out combinations whose singles are all measured (in the same contexts) and stay in
    training: can the model compose known effects?
``unseen_context``
    Held-out cell contexts: every cell of a test context (controls included) is in test.
``unseen_pair``
    Held-out (perturbation, cell context) pairs (``"MAPK1@A172"``): every cell of a test pair is
    in test, while that context's controls and other perturbations, and the same perturbation in
    its other contexts, stay in training: what does a perturbation measured in some lines do in
    another? Eligible pairs (drawn, rotated over folds) are those of single perturbations
    measured in >= 2 contexts (a combination's pair can be named), and every held-out
    perturbation stays trained in at least one context. Combinations naming a held-out
    single's target in that context follow ``combos_with_test_targets``.

Validation takes ``validation_fraction`` of the remaining training cells at random within
groups (an in-distribution validation set for SFT). ``unseen_single`` and ``unseen_combo`` can
also hold out *validation perturbations* (``n_validation_perturbations`` drawn like the test
ones, or ``validation_perturbations`` named), and ``unseen_pair`` *validation pairs*
(``n_validation_pairs`` / ``validation_pairs``): every cell of them is in validation and no
training row names them (in that context, for pairs), so they are unseen in the same way as
test. The data stage writes RL prompts for them (``rl/validation``), and the RL stage picks its
policy on those, leaving the test units untouched for the final evaluation.

Folds (``folds: K``, ``fold: i``; :mod:`cellrlhf.data.split_folds`) rotate the eligible units of
``unseen_single`` / ``unseen_combo`` / ``unseen_pair`` over K seeded folds: fold i's units are
test, every unit is test in exactly one fold, and validation units are drawn from the training
part of each fold.

Controls used as inputs (prompts, control pseudo-bulks) for a split's examples come from that
split's own control cells when it has some in the context, else from the training controls:
controls are inputs, not answers, so that is not leakage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cellrlhf.data.schema import CONTROL_LABEL, perturbation_targets
from cellrlhf.data.split_config import (
    FOLD_KINDS,
    SPLIT_KINDS,
    LeakageError,
    SplitConfig,
    SplitError,
)
from cellrlhf.data.split_folds import fold_partition
from cellrlhf.data.split_pairs import Pair, single_targets_in, split_unseen_pair

__all__ = [
    "SPLIT_KINDS",
    "FOLD_KINDS",
    "SPLIT_NAMES",
    "SplitConfig",
    "SplitAssignment",
    "SplitError",
    "make_splits",
    "LeakageError",
]

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test", "excluded")


@dataclass
class SplitAssignment:
    """Which cells and perturbations are in which split.

    Attributes
    ----------
    config
        The split config.
    labels
        Per cell: ``"train"``, ``"validation"``, ``"test"`` or ``"excluded"``.
    test_perturbations
        Held-out perturbations (``unseen_single`` / ``unseen_combo``).
    test_targets
        ``unseen_single``: target genes of the held-out singles.
    test_contexts
        ``unseen_context``: held-out contexts.
    excluded_perturbations
        Perturbations left out of every split (combinations with a test or validation target).
    validation_perturbations
        Held-out validation perturbations (every cell in validation).
    validation_targets
        ``unseen_single``: target genes of the validation singles.
    test_pairs, validation_pairs, excluded_pairs
        ``unseen_pair``: held-out (perturbation, context) pairs of test and validation (combinations
        put there by ``combos_with_test_targets="test"`` included), and pairs left out of every
        split (combinations naming a held-out single's target in its context).
    fold, folds
        The fold built and the number of folds (None without folds).
    fold_units
        With folds: every fold's test units (names; pairs as ``"PERT@CONTEXT"``).
    """

    config: SplitConfig
    labels: np.ndarray
    test_perturbations: list[str] = field(default_factory=list)
    test_targets: list[str] = field(default_factory=list)
    test_contexts: list[str] = field(default_factory=list)
    excluded_perturbations: list[str] = field(default_factory=list)
    validation_perturbations: list[str] = field(default_factory=list)
    validation_targets: list[str] = field(default_factory=list)
    test_pairs: list[Pair] = field(default_factory=list)
    validation_pairs: list[Pair] = field(default_factory=list)
    excluded_pairs: list[Pair] = field(default_factory=list)
    fold: int | None = None
    folds: int | None = None
    fold_units: list[list[str]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.config.kind

    def rows(self, split: str) -> np.ndarray:
        """Row positions of the cells in ``split``."""
        return np.flatnonzero(self.labels == split)

    def is_held_out(self, perturbation: str, cell_context: str) -> bool:
        """Whether examples about ``perturbation`` in ``cell_context`` belong to test only."""
        if self.kind == "unseen_context":
            return cell_context in self.test_contexts
        if self.kind == "unseen_single":
            upper = {t.upper() for t in self.test_targets}
            return any(t.upper() in upper for t in perturbation_targets(perturbation))
        if self.kind == "unseen_combo":
            return perturbation in self.test_perturbations
        if self.kind == "unseen_pair":
            if (perturbation, cell_context) in set(self.test_pairs):
                return True
            upper = single_targets_in(self.test_pairs, cell_context)
            return any(t.upper() in upper for t in perturbation_targets(perturbation))
        return False

    def counts(self) -> dict[str, int]:
        names, codes = _factorize(self.labels)
        counts = np.bincount(codes, minlength=len(names))
        return {str(n): int(c) for n, c in zip(names, counts, strict=True)}

    def to_dict(self, cell_ids: Sequence[str], obs: pd.DataFrame | None = None) -> dict:
        """The split manifest (``splits.json``): parameters, held-out sets, cells per split.

        Pairs are lists of ``{"perturbation": ..., "cell_context": ...}``; ``fold`` / ``folds``
        are null without folds, and ``fold_units`` lists every fold's test units.
        """
        cell_ids = np.asarray(cell_ids, dtype=object)
        out = {
            "format": "cellrlhf.splits",
            "version": 1,
            "kind": self.kind,
            "config": {
                k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config.__dict__.items()
            },
            "test_perturbations": self.test_perturbations,
            "test_targets": self.test_targets,
            "test_contexts": self.test_contexts,
            "excluded_perturbations": self.excluded_perturbations,
            "validation_perturbations": self.validation_perturbations,
            "validation_targets": self.validation_targets,
            "test_pairs": _pair_records(self.test_pairs),
            "validation_pairs": _pair_records(self.validation_pairs),
            "excluded_pairs": _pair_records(self.excluded_pairs),
            "fold": self.fold,
            "folds": self.folds,
            "fold_units": self.fold_units,
            "counts": self.counts(),
            "cells": {name: cell_ids[self.rows(name)].tolist() for name in SPLIT_NAMES},
        }
        if obs is not None:
            out["groups"] = {name: _group_table(obs.iloc[self.rows(name)]) for name in SPLIT_NAMES}
        return out


def _pair_records(pairs: list[Pair]) -> list[dict]:
    return [{"perturbation": p, "cell_context": c} for p, c in pairs]


def _group_table(obs: pd.DataFrame) -> list[dict]:
    if len(obs) == 0:
        return []
    sizes = obs.groupby(["perturbation", "cell_context"], observed=True, sort=True).size()
    return [
        {"perturbation": str(p), "cell_context": str(c), "n_cells": int(n)}
        for (p, c), n in sizes.items()
    ]


def _factorize(values) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and the code of every element (hash-based, fast on strings)."""
    codes, uniques = pd.factorize(pd.Series(values, dtype=object), sort=True)
    return np.asarray(uniques, dtype=object), codes.astype(np.int64)


def _group_codes(obs: pd.DataFrame) -> tuple[np.ndarray, int]:
    keys = obs["perturbation"].astype(str) + "\x1f" + obs["cell_context"].astype(str)
    uniques, codes = _factorize(keys.to_numpy(dtype=object))
    return codes, len(uniques)


def _stratified_pick(
    rows: np.ndarray, codes: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Pick ``round(fraction * n)`` rows of every group (at least one from groups of >= 2)."""
    picked: list[np.ndarray] = []
    for group in np.unique(codes[rows]):
        members = rows[codes[rows] == group]
        k = int(round(fraction * len(members)))
        if k == 0 and len(members) >= 2 and fraction > 0:
            k = 1
        k = min(k, len(members) - 1) if len(members) > 1 else 0
        if k:
            picked.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _draw(items: list[str], fraction: float, rng: np.random.Generator, what: str) -> list[str]:
    if len(items) < 2:
        raise SplitError(
            f"only {len(items)} {what} available ({items}); holding some out needs at least 2 "
            "(one to train on, one to test)."
        )
    n = min(max(1, int(round(fraction * len(items)))), len(items) - 1)
    return sorted(str(x) for x in rng.choice(sorted(items), size=n, replace=False))


@dataclass
class _Coded:
    """Per-cell arrays the splitters share."""

    perts: np.ndarray
    contexts: np.ndarray
    codes: np.ndarray
    unique_perts: np.ndarray
    pert_codes: np.ndarray
    is_combo: np.ndarray
    present: list[str]

    @classmethod
    def of(cls, obs: pd.DataFrame) -> _Coded:
        perts = obs["perturbation"].astype(str).to_numpy()
        unique_perts, pert_codes = _factorize(perts)
        return cls(
            perts=perts,
            contexts=obs["cell_context"].astype(str).to_numpy(),
            codes=_group_codes(obs)[0],
            unique_perts=unique_perts,
            pert_codes=pert_codes,
            is_combo=np.array(["+" in p for p in unique_perts], dtype=bool)[pert_codes],
            present=sorted(set(perts) - {CONTROL_LABEL}),
        )


def make_splits(obs: pd.DataFrame, config: SplitConfig) -> SplitAssignment:
    """Assign every cell to a split.

    Parameters
    ----------
    obs
        Standardized cell metadata (``perturbation``, ``cell_context``).
    config
        The split rule.

    Returns
    -------
    The assignment; deterministic for the same ``obs`` and ``config``.
    """
    words = [config.seed, 0x5B117] + ([config.fold] if config.folds is not None else [])
    rng = np.random.default_rng(np.random.SeedSequence(words))  # per fold: its own validation
    data = _Coded.of(obs)
    labels = np.full(len(obs), "train", dtype=object)
    assignment = SplitAssignment(config=config, labels=labels, fold=config.fold, folds=config.folds)
    _SPLITTERS[config.kind](assignment, data, rng)
    if config.validation_fraction > 0:
        train_rows = np.flatnonzero(labels == "train")
        pick = _stratified_pick(train_rows, data.codes, config.validation_fraction, rng)
        labels[pick] = "validation"
    if config.folds is not None:
        logger.info(
            "split %s fold %d of %d: %s",
            config.kind,
            config.fold,
            config.folds,
            assignment.counts(),
        )
    else:
        logger.info("split %s: %s", config.kind, assignment.counts())
    return assignment


def _fold_units(
    assignment: SplitAssignment, units: list[str], what: str, group_of=None
) -> list[str]:
    """Fold ``config.fold``'s test units (records the whole partition on ``assignment``)."""
    config = assignment.config
    partition = fold_partition(units, config.folds, config.seed, group_of=group_of, what=what)
    assignment.fold_units = partition
    return list(partition[config.fold])


def _split_random_cells(assignment: SplitAssignment, data: _Coded, rng) -> None:
    rows = np.arange(len(data.perts), dtype=np.int64)
    assignment.labels[_stratified_pick(rows, data.codes, assignment.config.test_fraction, rng)] = (
        "test"
    )


def _split_unseen_single(assignment: SplitAssignment, data: _Coded, rng) -> None:
    config, labels = assignment.config, assignment.labels
    singles = sorted({p for p in data.present if "+" not in p})
    if config.folds is not None:
        chosen = _fold_units(assignment, singles, "single perturbations")
    elif config.test_perturbations is not None:
        chosen = list(config.test_perturbations)
        _check_known(chosen, data.present, "split.test_perturbations")
        combos = [p for p in chosen if "+" in p]
        if combos:
            raise SplitError(
                f"unseen_single holds out single perturbations; {combos} are combinations "
                "(use kind: unseen_combo)."
            )
    else:
        chosen = _draw(singles, config.test_fraction, rng, "single perturbations")
    if len(chosen) >= len(singles):
        raise SplitError("unseen_single would hold out every single perturbation.")
    assignment.test_perturbations = sorted(chosen)
    assignment.test_targets = sorted({t for p in chosen for t in perturbation_targets(p)})
    held = np.array([assignment.is_held_out(p, "") for p in data.unique_perts], dtype=bool)
    held = held[data.pert_codes]
    labels[held & ~data.is_combo] = "test"
    combos_hit = held & data.is_combo
    labels[combos_hit] = "test" if config.combos_with_test_targets == "test" else "excluded"
    if config.combos_with_test_targets == "test":
        assignment.test_perturbations = sorted(set(data.perts[held]))
    else:
        assignment.excluded_perturbations = sorted(set(data.perts[combos_hit]))
    if config.holds_out_validation_perturbations:
        coded = (data.perts, data.unique_perts, data.pert_codes, data.is_combo)
        _validation_singles(assignment, singles, data.present, coded, rng)


def _split_unseen_combo(assignment: SplitAssignment, data: _Coded, rng) -> None:
    config = assignment.config
    eligible = _eligible_combos(data.perts, data.contexts, config.combo_pool)
    what = _POOL_NAMES[config.combo_pool]
    if not eligible and config.test_perturbations is None:
        if config.combo_pool == "all":
            raise SplitError("unseen_combo needs combinations; this data has none.")
        raise SplitError(
            "unseen_combo needs combinations whose single perturbations are all measured "
            "in the same cell contexts; this data has none. Use unseen_single or "
            "random_cells, or set split.combo_pool: all to hold out combinations with an "
            "unmeasured single."
        )
    if config.folds is not None:
        chosen = _fold_units(assignment, eligible, what)
    elif config.test_perturbations is not None:
        chosen = list(config.test_perturbations)
        _check_known(chosen, data.present, "split.test_perturbations")
        bad = [p for p in chosen if p not in eligible]
        if bad:
            raise SplitError(
                f"{bad} cannot be unseen combinations: each must be a combination whose "
                f"singles are all measured in the same contexts. Eligible: {eligible[:20]}."
            )
    elif len(eligible) > 1:
        chosen = _draw(eligible, config.test_fraction, rng, what)
    else:
        chosen = list(eligible)
    assignment.test_perturbations = sorted(chosen)
    assignment.labels[np.isin(data.perts, chosen)] = "test"
    if config.holds_out_validation_perturbations:
        _validation_combos(assignment, eligible, data.present, data.perts, rng, what)


def _split_unseen_context(assignment: SplitAssignment, data: _Coded, rng) -> None:
    config, contexts = assignment.config, data.contexts
    all_contexts = sorted(set(contexts))
    if config.test_contexts is not None:
        chosen = list(config.test_contexts)
        _check_known(chosen, all_contexts, "split.test_contexts")
    else:
        eligible = _contexts_sharing_perturbations(data.perts, contexts)
        if not eligible:
            raise SplitError(
                "unseen_context needs perturbations measured in several cell contexts; no "
                "context shares a perturbation with another. Name split.test_contexts "
                "explicitly to hold one out anyway."
            )
        n = min(config.n_test_contexts, len(all_contexts) - 1)
        chosen = sorted(
            str(c) for c in rng.choice(eligible, size=min(n, len(eligible)), replace=False)
        )
    if len(chosen) >= len(all_contexts):
        raise SplitError(f"unseen_context would hold out every context {all_contexts}.")
    assignment.test_contexts = sorted(chosen)
    assignment.labels[np.isin(contexts, chosen)] = "test"


_SPLITTERS = {
    "random_cells": _split_random_cells,
    "unseen_single": _split_unseen_single,
    "unseen_combo": _split_unseen_combo,
    "unseen_context": _split_unseen_context,
    "unseen_pair": split_unseen_pair,
}


def _validation_choice(
    assignment: SplitAssignment,
    candidates: list[str],
    present: list[str],
    rng: np.random.Generator,
    what: str,
) -> list[str]:
    """The named validation perturbations (checked), or a seeded draw among ``candidates``."""
    config = assignment.config
    test = set(assignment.test_perturbations) | set(assignment.excluded_perturbations)
    if config.validation_perturbations:
        chosen = list(config.validation_perturbations)
        _check_known(chosen, present, "split.validation_perturbations")
        clash = sorted(set(chosen) & test)
        if clash:
            raise SplitError(
                f"split.validation_perturbations {clash} are held out for test already; choose "
                "other perturbations for validation."
            )
        return sorted(chosen)
    n = config.n_validation_perturbations
    if n > len(candidates):
        raise SplitError(
            f"split.n_validation_perturbations={n}, but only {len(candidates)} {what} are left "
            f"after test ({candidates[:20]}); lower it, or name split.validation_perturbations."
        )
    return sorted(str(x) for x in rng.choice(sorted(candidates), size=n, replace=False))


def _validation_singles(assignment, singles, present, coded, rng) -> None:
    """Hold out single perturbations (and what names their targets) for validation."""
    config, labels = assignment.config, assignment.labels
    perts, unique_perts, pert_codes, is_combo = coded
    test = set(assignment.test_perturbations)
    candidates = [p for p in singles if p not in test]
    chosen = _validation_choice(assignment, candidates, present, rng, "single perturbations")
    combos = [p for p in chosen if "+" in p]
    if combos:
        raise SplitError(
            f"unseen_single holds out single perturbations; {combos} are combinations."
        )
    if len(chosen) >= len(candidates):
        raise SplitError(
            f"validation perturbations {chosen} would leave no single perturbation to train on."
        )
    targets = sorted({t for p in chosen for t in perturbation_targets(p)})
    upper = {t.upper() for t in targets}
    names = np.array(
        [any(t.upper() in upper for t in perturbation_targets(p)) for p in unique_perts],
        dtype=bool,
    )
    hit = names[pert_codes] & (labels == "train")
    labels[hit & ~is_combo] = "validation"
    combos_hit = hit & is_combo
    if config.combos_with_test_targets == "test":
        labels[combos_hit] = "validation"
    else:
        labels[combos_hit] = "excluded"
        assignment.excluded_perturbations = sorted(
            set(assignment.excluded_perturbations) | set(perts[combos_hit])
        )
    assignment.validation_perturbations = sorted(set(perts[labels == "validation"]))
    assignment.validation_targets = targets


def _validation_combos(assignment, eligible, present, perts, rng, what) -> None:
    """Hold out combinations for validation (named ones may have unmeasured singles)."""
    test = set(assignment.test_perturbations)
    candidates = [p for p in eligible if p not in test]
    chosen = _validation_choice(assignment, candidates, present, rng, what)
    singles = [p for p in chosen if "+" not in p]
    if singles:
        raise SplitError(
            f"unseen_combo holds out combinations; {singles} are single perturbations."
        )
    assignment.labels[np.isin(perts, chosen) & (assignment.labels == "train")] = "validation"
    assignment.validation_perturbations = chosen


def _check_known(chosen: list[str], known: list[str], where: str) -> None:
    missing = [c for c in chosen if c not in known]
    if missing:
        raise SplitError(
            f"{where} names {missing}, which are not in the data; known: {known[:30]}."
        )


_POOL_NAMES = {
    "singles_measured": "eligible combinations (singles measured)",
    "all": "combinations",
}


def _eligible_combos(perts: np.ndarray, contexts: np.ndarray, pool: str) -> list[str]:
    """The combinations ``split.combo_pool`` lets unseen_combo hold out."""
    contexts_of: dict[str, set[str]] = {}
    for p, c in set(zip(perts.tolist(), contexts.tolist(), strict=True)):
        contexts_of.setdefault(p, set()).add(c)
    eligible = []
    for p, where in contexts_of.items():
        if p == CONTROL_LABEL or "+" not in p:
            continue
        measured = all(where <= contexts_of.get(t, set()) for t in perturbation_targets(p))
        if measured or pool == "all":
            eligible.append(p)
    return sorted(eligible)


def _contexts_sharing_perturbations(perts: np.ndarray, contexts: np.ndarray) -> list[str]:
    contexts_of: dict[str, set[str]] = {}
    for p, c in set(zip(perts.tolist(), contexts.tolist(), strict=True)):
        if p != CONTROL_LABEL:
            contexts_of.setdefault(p, set()).add(c)
    shared = {c for where in contexts_of.values() if len(where) > 1 for c in where}
    return sorted(shared)
