"""The ``split:`` section of a data config (see :mod:`cellrlhf.data.splits` for the kinds)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "SPLIT_KINDS",
    "FOLD_KINDS",
    "COMBO_POOLS",
    "SplitConfig",
    "SplitError",
    "LeakageError",
]

SPLIT_KINDS = ("random_cells", "unseen_single", "unseen_combo", "unseen_context", "unseen_pair")
# kinds whose held-out units can rotate over folds
FOLD_KINDS = ("unseen_single", "unseen_combo", "unseen_pair")
# which combinations unseen_combo may hold out
COMBO_POOLS = ("singles_measured", "all")
_PAIR_KEYS = ("test_pairs", "validation_pairs")


class SplitError(ValueError):
    """The data cannot be split as asked."""


class LeakageError(AssertionError):
    """Held-out information (cells, perturbations, pairs) found in training or preference data."""


@dataclass(frozen=True)
class SplitConfig:
    """The ``split:`` section of a data config.

    Attributes
    ----------
    kind
        One of :data:`SPLIT_KINDS`.
    test_fraction
        ``random_cells``: share of each group's cells; ``unseen_single`` / ``unseen_combo`` /
        ``unseen_pair``: share of the eligible units (at least one; ``unseen_pair``: pairs of
        single perturbations measured in >= 2 contexts). Unused with ``folds``.
    validation_fraction
        Share of the remaining training cells kept for validation.
    test_perturbations
        Explicit held-out perturbations (``unseen_single`` / ``unseen_combo``), overriding
        ``test_fraction``.
    test_contexts, n_test_contexts
        ``unseen_context``: explicit held-out contexts, or how many to draw.
    combos_with_test_targets
        ``unseen_single`` / ``unseen_pair``: ``"exclude"`` or ``"test"`` for combinations naming a
        held-out single's target (``unseen_pair``: in the held-out pair's context only);
        validation targets follow the same rule (their combinations are excluded, or put in
        validation).
    combo_pool
        ``unseen_combo``: which combinations may be held out (test, folds and drawn validation):
        ``"singles_measured"`` (default), those whose singles are all measured in the same
        contexts, so that ``components`` evidence and the ``additive`` baseline exist for each;
        ``"all"``, every combination, also one with an unmeasured single (more held-out
        combinations for the paired intervals; ``additive`` is not applicable to those).
    n_validation_perturbations
        ``unseen_single`` / ``unseen_combo``: how many perturbations to hold out for validation,
        drawn among the candidates left after test (single perturbations; combinations of the
        ``combo_pool``).
    validation_perturbations
        Explicit validation perturbations, overriding ``n_validation_perturbations``
        (``unseen_combo`` accepts any combination here, also one whose singles are not measured).
    test_pairs
        ``unseen_pair``: explicit held-out (perturbation, cell context) pairs, written
        ``"PERT@CONTEXT"`` (``"MAPK1@A172"``) or as mappings
        ``{perturbation: MAPK1, cell_context: A172}``; stored as ``"PERT@CONTEXT"``.
    n_validation_pairs, validation_pairs
        ``unseen_pair``: how many pairs to hold out for validation (drawn among the training
        pairs), or which.
    folds
        Rotate the held-out units (``unseen_single``: singles; ``unseen_combo``: combinations
        of the ``combo_pool``; ``unseen_pair``: pairs of single perturbations measured in
        >= 2 contexts, each perturbation's pairs in different folds) over this many seeded folds; ``fold`` picks the one to build. Excludes named
        test or validation units.
    fold
        Which fold (0-based, default 0 when ``folds`` is set) holds its units out for test.
    seed
        Seed of the split (and of the fold partition).
    """

    kind: str = "random_cells"
    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    test_perturbations: tuple[str, ...] | None = None
    test_contexts: tuple[str, ...] | None = None
    n_test_contexts: int = 1
    combos_with_test_targets: str = "exclude"
    combo_pool: str = "singles_measured"
    n_validation_perturbations: int = 0
    validation_perturbations: tuple[str, ...] | None = None
    test_pairs: tuple[str, ...] | None = None
    n_validation_pairs: int = 0
    validation_pairs: tuple[str, ...] | None = None
    folds: int | None = None
    fold: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise SplitError(f"split.kind={self.kind!r}; choose one of {SPLIT_KINDS}.")
        if not 0.0 < self.test_fraction < 1.0:
            raise SplitError(f"split.test_fraction must be in (0, 1), got {self.test_fraction}.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise SplitError(
                f"split.validation_fraction must be in [0, 1), got {self.validation_fraction}."
            )
        if self.combos_with_test_targets not in ("exclude", "test"):
            raise SplitError("split.combos_with_test_targets must be 'exclude' or 'test'.")
        if self.combo_pool not in COMBO_POOLS:
            raise SplitError(f"split.combo_pool={self.combo_pool!r}; choose one of {COMBO_POOLS}.")
        if self.combo_pool != "singles_measured" and self.kind != "unseen_combo":
            raise SplitError(
                f"split.combo_pool is for kind 'unseen_combo', not {self.kind!r}; remove it."
            )
        if self.n_test_contexts < 1:
            raise SplitError("split.n_test_contexts must be >= 1.")
        if self.n_validation_perturbations < 0 or self.n_validation_pairs < 0:
            raise SplitError(
                "split.n_validation_perturbations and split.n_validation_pairs must be >= 0."
            )
        self._check_held_out_keys()
        self._check_folds()

    def _check_held_out_keys(self) -> None:
        if self.holds_out_validation_perturbations and self.kind not in (
            "unseen_single",
            "unseen_combo",
        ):
            hint = (
                " unseen_pair holds out validation pairs: use n_validation_pairs / "
                "validation_pairs."
                if self.kind == "unseen_pair"
                else ""
            )
            raise SplitError(
                f"split.kind={self.kind!r} cannot hold out validation perturbations; they exist "
                "for unseen_single and unseen_combo. Remove n_validation_perturbations / "
                f"validation_perturbations, or change the kind.{hint}"
            )
        uses_pairs = any(getattr(self, k) for k in _PAIR_KEYS) or self.n_validation_pairs > 0
        if uses_pairs and self.kind != "unseen_pair":
            raise SplitError(
                f"split.test_pairs / validation_pairs / n_validation_pairs belong to kind "
                f"unseen_pair, not {self.kind!r}; remove them or set split.kind: unseen_pair."
            )
        if self.kind == "unseen_pair" and self.test_perturbations is not None:
            raise SplitError(
                "unseen_pair holds out (perturbation, context) pairs: name them in "
                "split.test_pairs (e.g. ['MAPK1@A172']), not split.test_perturbations."
            )

    def _check_folds(self) -> None:
        if self.folds is None:
            if self.fold is not None:
                raise SplitError(
                    f"split.fold={self.fold} needs split.folds (the number of folds); set "
                    "split.folds: K or remove split.fold."
                )
            return
        if self.kind not in FOLD_KINDS:
            raise SplitError(
                f"split.folds is for kinds {FOLD_KINDS}, not {self.kind!r}; remove split.folds "
                "or change the kind."
            )
        if self.folds < 2:
            raise SplitError(f"split.folds must be >= 2, got {self.folds}.")
        named_keys = ("test_perturbations", "test_pairs", "validation_perturbations")
        named = [k for k in named_keys + ("validation_pairs",) if getattr(self, k) is not None]
        if named:
            raise SplitError(
                f"split.folds rotates the held-out units itself, so it cannot be combined with "
                f"{named}: remove them (validation units are drawn per fold with "
                "n_validation_perturbations / n_validation_pairs), or remove split.folds."
            )
        fold = 0 if self.fold is None else self.fold
        if not 0 <= fold < self.folds:
            raise SplitError(
                f"split.fold={fold} is out of range for split.folds={self.folds}; use 0 to "
                f"{self.folds - 1}."
            )
        object.__setattr__(self, "fold", fold)

    @property
    def holds_out_validation_perturbations(self) -> bool:
        return bool(self.validation_perturbations) or self.n_validation_perturbations > 0

    @classmethod
    def from_dict(cls, spec: Mapping | None) -> SplitConfig:
        from cellrlhf.data.split_pairs import normalize_pair_spec

        spec = dict(spec or {})
        known = set(cls.__dataclass_fields__)
        unknown = set(spec) - known
        if unknown:
            raise SplitError(
                f"unknown key(s) {sorted(unknown)} in 'split'; known: {sorted(known)}."
            )
        for key in ("test_perturbations", "test_contexts", "validation_perturbations"):
            if spec.get(key) is not None:
                value = spec[key]
                spec[key] = (value,) if isinstance(value, str) else tuple(str(v) for v in value)
        for key in _PAIR_KEYS:
            spec[key] = normalize_pair_spec(spec.get(key), f"split.{key}")
        return cls(**spec)
