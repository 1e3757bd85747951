"""What every dataset row will be made of, decided from cell metadata alone, before any
expression is read: which cells each example shows, which control cell pairs with which
perturbed cell, which cells form each pseudo-bulk. The single streaming pass then only needs
to produce the planned cells' sentences and the groups' sums.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cellrlhf.data.balance import balanced_sample
from cellrlhf.data.schema import CONTROL_LABEL

__all__ = [
    "CellTable",
    "GroupIndex",
    "ExampleSpec",
    "RLGroupSpec",
    "task_rng",
    "plan_pretrain",
    "plan_decoder_cells",
    "plan_sft",
    "plan_rl",
]

_SPLIT_ORDER = ("train", "validation", "test")
# a context needs this many control cells in a split for them to serve as a reference
MIN_OWN_CONTROLS = 10


def task_rng(seed: int, *names: object) -> np.random.Generator:
    """A generator for one (task, split, ...) that does not depend on other tasks' draws."""
    words = [seed] + [zlib.crc32(str(n).encode()) for n in names]
    return np.random.default_rng(np.random.SeedSequence(words))


@dataclass
class CellTable:
    """The selected cells: standardized metadata, split labels and handy arrays."""

    obs: pd.DataFrame
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.cell_ids = self.obs.index.to_numpy(dtype=object)
        self.perts = self.obs["perturbation"].to_numpy(dtype=object)
        self.contexts = self.obs["cell_context"].to_numpy(dtype=object)
        self.types = self.obs["perturbation_type"].to_numpy(dtype=object)
        self.is_control = self.perts == CONTROL_LABEL
        self.pert_context = self.perts + "\x1f" + self.contexts
        self._cells_cache: dict = {}

    def __len__(self) -> int:
        return len(self.obs)

    def cells(self, split: str, *, control: bool | None = None, context: str | None = None):
        """Positions of the cells of ``split`` (optionally only controls / one context)."""
        key = (split, control, context)
        if key not in self._cells_cache:
            mask = self.labels == split
            if control is not None:
                mask &= self.is_control == control
            if context is not None:
                mask &= self.contexts == context
            self._cells_cache[key] = np.flatnonzero(mask)
        return self._cells_cache[key]

    @property
    def has_perturbations(self) -> bool:
        return bool((~self.is_control).any())


@dataclass
class GroupIndex:
    """Groups of cells sharing (split, perturbation, cell context)."""

    keys: list[tuple[str, str, str]]
    of_cell: np.ndarray
    sizes: np.ndarray
    id_of: dict = field(default_factory=dict)

    @classmethod
    def build(cls, table: CellTable) -> GroupIndex:
        in_split = np.isin(table.labels, _SPLIT_ORDER)
        rows = np.flatnonzero(in_split)
        joined = (
            pd.Series(table.labels[rows], dtype=object)
            + "\x1f"
            + pd.Series(table.perts[rows], dtype=object)
            + "\x1f"
            + pd.Series(table.contexts[rows], dtype=object)
        )
        codes, uniques = pd.factorize(joined, sort=True)
        keys = [tuple(u.split("\x1f")) for u in uniques]
        of_cell = np.full(len(table), -1, dtype=np.int64)
        of_cell[rows] = codes
        sizes = np.bincount(codes, minlength=len(keys))
        return cls(keys, of_cell, sizes, {k: i for i, k in enumerate(keys)})

    def get(self, split: str, perturbation: str, context: str) -> int:
        return self.id_of.get((split, perturbation, context), -1)

    def control_split(self, split: str, context: str) -> str:
        """The split whose controls serve ``split`` in ``context``.

        The training controls wherever the context has at least :data:`MIN_OWN_CONTROLS` of
        them, so validation mirrors test (a held-out perturbation's change is taken against the
        same, large control set; the few controls drawn into validation would add noise that
        the predicted and the real change share, inflating validation fidelity). A context held
        out whole (``unseen_context``) has no training controls: its own serve.
        """
        trained = self.get("train", CONTROL_LABEL, context)
        if trained >= 0 and self.sizes[trained] >= MIN_OWN_CONTROLS:
            return "train"
        own = self.get(split, CONTROL_LABEL, context)
        return split if own >= 0 and self.sizes[own] >= MIN_OWN_CONTROLS else "train"

    def control_group(self, split: str, context: str) -> int:
        return self.get(self.control_split(split, context), CONTROL_LABEL, context)


@dataclass
class ExampleSpec:
    """One planned instruction example."""

    task: str
    split: str
    cell: int = -1
    control_cell: int = -1
    context_mode: str = "none"
    perturbation: str = ""
    cell_context: str = ""
    perturbation_type: str = ""
    control_group: int = -1
    group: int = -1


@dataclass
class RLGroupSpec:
    """One planned RL prompt: a (perturbation, context) group of a split and its references."""

    split: str
    group: int
    control_group: int
    perturbation: str
    cell_context: str
    perturbation_type: str
    reference_cells: np.ndarray
    control_cells: np.ndarray
    context_mode: str
    prompt_control_cell: int = -1
    repeat: int = 0


def _cap(rows: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    if cap is None or len(rows) <= cap:
        return rows
    return np.sort(rng.choice(rows, size=cap, replace=False))


def _cap_per_group(rows: np.ndarray, keys: np.ndarray, cap: int | None, rng) -> np.ndarray:
    if cap is None or len(rows) == 0:
        return rows
    kept = []
    for key in sorted(set(keys[rows].tolist())):
        members = rows[keys[rows] == key]
        kept.append(_cap(members, cap, rng))
    return np.sort(np.concatenate(kept))


def _type_of(table: CellTable, rows: np.ndarray) -> str:
    return str(table.types[rows[0]]) if len(rows) else "other"


def plan_pretrain(config, table: CellTable, seed: int) -> np.ndarray:
    """Cells of the pretraining corpus: training cells, balanced and capped (may repeat)."""
    rng = task_rng(seed, "pretrain")
    rows = table.cells("train")
    rows = balanced_sample(
        table.obs, config.balance, candidates=rows, seed=int(rng.integers(2**31))
    )
    if config.max_cells is not None and len(rows) > config.max_cells:
        rows = np.sort(rng.choice(rows, size=config.max_cells, replace=False))
    return rows


def plan_decoder_cells(table: CellTable, max_cells: int | None, seed: int) -> np.ndarray:
    """Training cells the expression decoder is fitted on."""
    return _cap(table.cells("train"), max_cells, task_rng(seed, "decoder"))


def _limit(task_config, split: str) -> int | None:
    return task_config.max_examples if split == "train" else task_config.max_eval_examples


def _context_modes(mode: str, n: int, rng) -> np.ndarray:
    if mode == "mixed":
        return np.where(rng.random(n) < 0.5, "control_cell", "pseudobulk")
    return np.full(n, mode, dtype=object)


def plan_sft(config, table: CellTable, groups: GroupIndex, seed: int) -> list[ExampleSpec]:
    """Instruction examples of every enabled task and split (see :mod:`cellrlhf.data.instructions`)."""
    specs: list[ExampleSpec] = []
    perturbed_data = table.has_perturbations
    for task, task_config in config.sft.tasks.items():
        if not task_config.enabled:
            continue
        for split in _SPLIT_ORDER:
            rng = task_rng(seed, "sft", task, split)
            limit = _limit(task_config, split)
            if task == "perturbation_effect":
                specs += _plan_effect(table, groups, split, task_config, limit, rng)
                continue
            if task == "cell_annotation":
                rows = table.cells(split)
                key = table.contexts
            elif task == "cell_generation":
                rows = table.cells(split, control=True) if perturbed_data else table.cells(split)
                key = table.contexts
            else:  # perturbation_response / perturbation_identification
                rows = _with_controls(table, split, task_config.control_fraction, rng)
                key = table.pert_context
            if len(rows) == 0:
                continue
            if split == "train":  # evaluation sets keep their natural composition
                rows = balanced_sample(
                    table.obs, task_config.balance, candidates=rows, seed=int(rng.integers(2**31))
                )
            rows = _cap_per_group(rows, key, task_config.per_group, rng)
            rows = _cap(rows, limit, rng)
            if task == "perturbation_response":
                specs += _plan_response(table, groups, split, rows, task_config.context, rng)
            else:
                specs += [
                    ExampleSpec(
                        task=task,
                        split=split,
                        cell=int(r),
                        perturbation=str(table.perts[r]),
                        cell_context=str(table.contexts[r]),
                        perturbation_type=str(table.types[r]),
                    )
                    for r in rows
                ]
    return specs


def _with_controls(table, split: str, control_fraction: float, rng) -> np.ndarray:
    """The perturbed cells of ``split`` plus ``control_fraction`` of their number in controls."""
    perturbed = table.cells(split, control=False)
    controls = table.cells(split, control=True)
    n_controls = int(round(control_fraction * len(perturbed)))
    if control_fraction > 0:
        n_controls = max(n_controls, 1) if len(controls) else 0
    controls = _cap(controls, n_controls, rng)
    return np.sort(np.concatenate([perturbed, controls]))


def _plan_response(table, groups, split, rows, mode, rng) -> list[ExampleSpec]:
    """Response examples; a control answer (the model's own reference, see
    ``docs/evidence.md``) is paired with a *different* control cell in its prompt."""
    modes = _context_modes(mode, len(rows), rng)
    specs = []
    for r, context_mode in zip(rows, modes, strict=True):
        context = str(table.contexts[r])
        control_group = groups.control_group(split, context)
        control_cell = -1
        if context_mode == "control_cell":
            pool = table.cells(groups.control_split(split, context), control=True, context=context)
            pool = pool[pool != r]
            if len(pool) == 0:
                continue
            control_cell = int(rng.choice(pool))
        specs.append(
            ExampleSpec(
                task="perturbation_response",
                split=split,
                cell=int(r),
                control_cell=control_cell,
                context_mode=str(context_mode),
                perturbation=str(table.perts[r]),
                cell_context=context,
                perturbation_type=str(table.types[r]),
                control_group=control_group,
            )
        )
    return specs


def _plan_effect(table, groups, split, task_config, limit, rng) -> list[ExampleSpec]:
    specs = []
    repeats = task_config.per_group or 1
    for gid, (s, pert, context) in enumerate(groups.keys):
        if s != split or pert == CONTROL_LABEL:
            continue
        control_group = groups.control_group(split, context)
        if control_group < 0:
            continue
        members = np.flatnonzero(groups.of_cell == gid)
        specs += [
            ExampleSpec(
                task="perturbation_effect",
                split=split,
                perturbation=pert,
                cell_context=context,
                perturbation_type=_type_of(table, members),
                control_group=control_group,
                group=gid,
            )
            for _ in range(repeats)
        ]
    if limit is not None and len(specs) > limit:
        keep = np.sort(rng.choice(len(specs), size=limit, replace=False))
        specs = [specs[i] for i in keep]
    return specs


def plan_rl(
    config,
    table: CellTable,
    groups: GroupIndex,
    seed: int,
    *,
    validation_perturbations: Collection[str] = (),
    validation_pairs: Collection[tuple[str, str]] = (),
) -> tuple[list[RLGroupSpec], list[dict]]:
    """RL prompts for every (perturbation, context) group of train and test with enough cells.

    Groups of the held-out ``validation_perturbations`` (any context) and ``validation_pairs``
    (``(perturbation, cell_context)``, ``unseen_pair``) get prompts too (split ``validation``);
    validation cells of training perturbations do not (RL trains on those perturbations).
    Returns the planned prompts and the skipped groups (with the reason).
    """
    validation_perturbations = set(validation_perturbations)
    validation_pairs = {(str(p), str(c)) for p, c in validation_pairs}
    rl = config.rl
    specs: list[RLGroupSpec] = []
    skipped: list[dict] = []
    control_samples: dict[int, np.ndarray] = {}
    for gid, (split, pert, context) in enumerate(groups.keys):
        if pert == CONTROL_LABEL or not (
            split in ("train", "test")
            or (
                split == "validation"
                and (pert in validation_perturbations or (pert, context) in validation_pairs)
            )
        ):
            continue
        n = int(groups.sizes[gid])
        control_group = groups.control_group(split, context)
        if n < rl.min_cells or control_group < 0:
            why = (
                f"{n} cells < rl.min_cells={rl.min_cells}"
                if n < rl.min_cells
                else "no control cells"
            )
            skipped.append(
                {"split": split, "perturbation": pert, "cell_context": context, "reason": why}
            )
            continue
        rng = task_rng(seed, "rl", split, pert, context)
        members = np.flatnonzero(groups.of_cell == gid)
        controls = np.flatnonzero(groups.of_cell == control_group)
        references = _cap(members, rl.n_reference_sentences, rng)
        if control_group not in control_samples:  # one sample per control group, shared
            control_rng = task_rng(seed, "rl-controls", *groups.keys[control_group])
            control_samples[control_group] = _cap(controls, rl.max_control_cells, control_rng)
        control_sample = control_samples[control_group]
        modes = _context_modes(rl.context, rl.prompts_per_group, rng)
        for repeat, mode in enumerate(modes):
            prompt_control = int(rng.choice(controls)) if mode == "control_cell" else -1
            specs.append(
                RLGroupSpec(
                    split=split,
                    group=gid,
                    control_group=control_group,
                    perturbation=pert,
                    cell_context=context,
                    perturbation_type=_type_of(table, members),
                    reference_cells=references,
                    control_cells=control_sample,
                    context_mode=str(mode),
                    prompt_control_cell=prompt_control,
                    repeat=repeat,
                )
            )
    return specs, skipped
