"""The ``evidence:`` section of a data config: which measured evidence perturbation prompts show.

Off by default (``kinds: []``): prompts are then byte-identical to a build without the section.
See ``docs/evidence.md`` and :mod:`cellrlhf.data.evidence`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from cellrlhf.config_types import check_types

__all__ = [
    "EVIDENCE_KINDS",
    "EVIDENCE_WRITES",
    "SYNTHETIC_APPLY",
    "EvidenceError",
    "NeighbourConfig",
    "EvidenceConfig",
    "SAME_INFORMATION_BASELINE",
    "evidence_note",
]

EVIDENCE_KINDS = ("average_response", "components", "other_contexts", "neighbours")
EVIDENCE_WRITES = ("profile", "change")
SYNTHETIC_APPLY = ("shift", "detection")


class EvidenceError(ValueError):
    """The evidence section or the gene-similarity table is invalid."""


def _check_keys(spec, cls, section: str) -> None:
    if not isinstance(spec, Mapping):
        raise EvidenceError(f"section {section!r} must be a mapping, got {type(spec).__name__}.")
    known = {f.name for f in fields(cls)}
    unknown = set(spec) - known
    if unknown:
        raise EvidenceError(
            f"unknown key(s) {sorted(unknown)} in {section!r}; known: {sorted(known)}."
        )
    check_types(cls, spec, section, EvidenceError)


@dataclass(frozen=True)
class NeighbourConfig:
    """``evidence.neighbours``: the gene-similarity table and how many neighbours to show.

    Attributes
    ----------
    table
        CSV or Parquet file: rows are genes, the first column the gene symbol, the other columns
        numbers (an embedding or gene-set membership); similarity is the cosine. Relative paths
        are relative to the working directory. Required when ``neighbours`` is a kind.
    k
        Training perturbations shown per prompt (the nearest ``k``).
    """

    table: str | None = None
    k: int = 3

    def __post_init__(self) -> None:
        if self.k < 1:
            raise EvidenceError(f"evidence.neighbours.k must be >= 1, got {self.k}.")


@dataclass(frozen=True)
class EvidenceConfig:
    """Measured evidence written into perturbation prompts (pseudo-bulks of training cells).

    Attributes
    ----------
    kinds
        Any of :data:`EVIDENCE_KINDS`, in the order they appear in prompts; empty = off.
    neighbours
        :class:`NeighbourConfig` (used by the ``neighbours`` kind).
    min_cells
        A (perturbation, context) group of training cells counts as measured only with at
        least this many cells.
    write
        How each measured item is written. ``"profile"``: the pseudo-bulk as a cell sentence
        (genes by mean expression, as long as a typical cell; mostly the same highly expressed
        genes in every item). ``"change"``: the genes the item changes against the context's
        training control cells (mean expression minus the control mean, the information the
        same-information baselines use), grouped by size: ``raised >=1 <cell> HBZ </cell>
        >=0.3 <cell> ... </cell> lowered >=0.1 <cell> ... </cell>``, largest first.
    change_tiers
        With ``write: change``: the size classes, descending, in the build's expression units
        (log1p of normalised counts by default: 0.1 is about a 10 % change); a gene changed less
        than the last is not written.
    change_genes
        With ``write: change``: at most this many raised and this many lowered genes per item.
    components_of_singles
        With ``components``: a single perturbation's prompt shows the single itself as its one
        component (its training cells; a held-out single's is "not measured"). A combination
        prompt's components are other perturbations' measurements, but a data set has few
        combinations whose components are measured (Norman: 2 per training fold), too few to
        learn to read them; with this, every training single teaches it (its answer is then in
        its prompt, so read training-prompt fidelity accordingly).
    synthetic_combinations
        With ``components``: this many extra SFT ``perturbation_response`` training examples
        about combinations of two measured training singles that the data never measured
        together, answered by a synthetic cell (a training cell of one single plus the other's
        mean change against the training controls: the additive model with one real cell's
        noise), so that a model learns to compose two component lines from many pairs
        (:mod:`cellrlhf.data.synthetic`). 0 = off.
    pool_other_contexts
        With ``other_contexts`` and ``write: change``: one line, the perturbation's mean change
        over the other contexts where it is measured (each against its own training controls,
        each context weighing 1: what ``context_transfer`` predicts), instead of one line per
        context. The line reads the same whether one context or several are pooled: with
        ``unseen_pair`` on 3 contexts every training prompt has 1 other context and every
        held-out prompt 2, a shape the per-context lines never show in training.
    synthetic_transfers
        With ``other_contexts``: this many extra SFT ``perturbation_response`` training examples
        about a perturbation in a context where it is not held out, answered by a synthetic
        cell (a training control cell of the context plus the perturbation's mean change in the
        other contexts, each against its own training controls: the ``context_transfer`` model
        with one real cell's noise), so that a model learns to carry the other contexts' lines
        over; a training pair is asked again beside its real cells
        (:mod:`cellrlhf.data.synthetic`). 0 = off.
    synthetic_min_change
        With ``synthetic_combinations`` or ``synthetic_transfers``: changes added that are
        smaller than this (in absolute value, expression units) are not added.
    synthetic_apply
        How the change is added to a synthetic row's base cell. ``shift``: to every gene,
        clipped at 0, so each positive change switches on a gene the cell does not express, at
        a small value, and synthetic cells are longer than real ones (McFaline's synthetic
        transfers: 91 genes per cell where real cells carry 50-75). ``detection``: added where
        the cell expresses the gene; a gene it does not express is switched on at its typical
        level (mean non-zero value in training cells) with probability change / level. Both
        give the same mean change over many cells; ``detection`` keeps real cells' sparsity.
    """

    kinds: tuple[str, ...] = ()
    neighbours: NeighbourConfig = field(default_factory=NeighbourConfig)
    min_cells: int = 10
    write: str = "profile"
    change_tiers: tuple[float, ...] = (1.0, 0.3, 0.1)
    change_genes: int = 20
    components_of_singles: bool = False
    synthetic_combinations: int = 0
    pool_other_contexts: bool = False
    synthetic_transfers: int = 0
    synthetic_min_change: float = 0.1
    synthetic_apply: str = "shift"

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in EVIDENCE_KINDS]
        if unknown:
            raise EvidenceError(
                f"evidence.kinds has unknown kind(s) {unknown}; choose from {EVIDENCE_KINDS}."
            )
        if len(set(self.kinds)) != len(self.kinds):
            raise EvidenceError(f"evidence.kinds repeats a kind: {list(self.kinds)}.")
        if self.min_cells < 1:
            raise EvidenceError(f"evidence.min_cells must be >= 1, got {self.min_cells}.")
        if self.write not in EVIDENCE_WRITES:
            raise EvidenceError(
                f"evidence.write must be one of {EVIDENCE_WRITES}, got {self.write!r}."
            )
        tiers = self.change_tiers
        if not tiers or any(t <= 0 for t in tiers) or list(tiers) != sorted(set(tiers))[::-1]:
            raise EvidenceError(
                f"evidence.change_tiers must be positive and strictly descending, got {list(tiers)}."
            )
        if self.change_genes < 1:
            raise EvidenceError(f"evidence.change_genes must be >= 1, got {self.change_genes}.")
        if "neighbours" in self.kinds and not self.neighbours.table:
            raise EvidenceError(
                "evidence kind 'neighbours' needs evidence.neighbours.table: a CSV or Parquet of "
                "gene vectors (first column the gene symbol; see docs/evidence.md)."
            )
        if self.components_of_singles and "components" not in self.kinds:
            raise EvidenceError(
                "evidence.components_of_singles needs 'components' in evidence.kinds."
            )
        if (
            min(self.synthetic_combinations, self.synthetic_transfers, self.synthetic_min_change)
            < 0
        ):
            raise EvidenceError(
                "evidence.synthetic_combinations, evidence.synthetic_transfers and "
                "evidence.synthetic_min_change must be >= 0."
            )
        if self.synthetic_apply not in SYNTHETIC_APPLY:
            raise EvidenceError(
                f"evidence.synthetic_apply must be one of {SYNTHETIC_APPLY}, got "
                f"{self.synthetic_apply!r}."
            )
        if self.synthetic_combinations and "components" not in self.kinds:
            raise EvidenceError(
                "evidence.synthetic_combinations needs 'components' in evidence.kinds (the "
                "examples teach reading the component lines)."
            )
        if self.pool_other_contexts and (
            "other_contexts" not in self.kinds or self.write != "change"
        ):
            raise EvidenceError(
                "evidence.pool_other_contexts needs 'other_contexts' in evidence.kinds and "
                "evidence.write: change (it pools the other contexts' changes)."
            )
        if self.synthetic_transfers and "other_contexts" not in self.kinds:
            raise EvidenceError(
                "evidence.synthetic_transfers needs 'other_contexts' in evidence.kinds (the "
                "examples teach reading the other contexts' lines)."
            )

    @property
    def enabled(self) -> bool:
        return bool(self.kinds)

    @classmethod
    def from_dict(cls, spec: Mapping | None) -> EvidenceConfig:
        """Parse the ``evidence:`` mapping (``None`` = off)."""
        spec = dict(spec or {})
        _check_keys(spec, cls, "evidence")
        spec["kinds"] = tuple(spec.get("kinds") or ())
        if "change_tiers" in spec:
            spec["change_tiers"] = tuple(float(t) for t in spec["change_tiers"])
        neighbours = dict(spec.get("neighbours") or {})
        _check_keys(neighbours, NeighbourConfig, "evidence.neighbours")
        spec["neighbours"] = NeighbourConfig(**neighbours)
        return cls(**spec)


# the baseline that uses the same information as each kind (a gain is never just the evidence)
SAME_INFORMATION_BASELINE = {
    "average_response": "mean",
    "components": "additive",
    "other_contexts": "context_transfer",
    "neighbours": "nearest",
}


def evidence_note(manifest: dict) -> str | None:
    """One sentence on the measured evidence a built dataset's prompts carry, naming the
    baseline that uses the same information for each kind; ``None`` without evidence.

    Parameters
    ----------
    manifest
        A dataset's ``manifest.json`` (its ``config.evidence.kinds`` is read).
    """
    kinds = list((((manifest or {}).get("config") or {}).get("evidence") or {}).get("kinds") or [])
    if not kinds:
        return None
    pairs = ", ".join(f"`{k}` (vs `{SAME_INFORMATION_BASELINE.get(k, '?')}`)" for k in kinds)
    return (
        f"Prompts carry measured evidence from training cells: {pairs}; each model is to be read "
        "against the baseline that uses the same information."
    )
