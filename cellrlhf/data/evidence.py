"""Measured evidence in perturbation prompts: pseudo-bulks of training cells, as cell sentences.

With an ``evidence:`` section (:class:`~cellrlhf.data.evidence_config.EvidenceConfig`), every
perturbation prompt (SFT ``perturbation_response`` / ``perturbation_effect``, RL prompts of every
split) starts with a block of evidence about its (perturbation, context):

``average_response``
    The mean perturbed cell of the context over the measured perturbations other than the
    prompted one: each perturbation's pseudo-bulk weighs 1 (mean of per-perturbation means).
``components``
    For a combination ``A+B``: each component single measured alone in the context (with
    ``components_of_singles``, a single shows itself: see the config).
``other_contexts``
    The same perturbation measured in the other contexts (meaningful with ``unseen_pair``).
``neighbours``
    The ``k`` measured perturbations of the context nearest to the prompted one in the user's
    gene-similarity table (:mod:`~cellrlhf.data.evidence_table`); never one sharing a target with
    it (those are components) nor the perturbation itself.

"Measured" means a (perturbation, context) group of **training** cells with at least
``evidence.min_cells`` cells. The prompted perturbation is always left out of its own evidence,
so a training prompt sees the same kind of evidence as a held-out one. Missing evidence is
written as an explicit "not measured" line. With ``evidence.write: profile`` each pseudo-bulk is
ranked into a sentence as the control pseudo-bulk of the ``pseudobulk`` prompt context is
(:meth:`~cellrlhf.data.references.References.profile_sentence`); with ``write: change`` it is
written as the genes it raises and lowers most against the context's training control cells
(the ``change`` phrase). Each row records the groups its evidence was computed from
(``evidence_sources``; with ``change`` the training controls too), which the leakage check
verifies.

:class:`EvidenceBuilder` computes every text once into an
:class:`~cellrlhf.data.evidence_index.EvidenceIndex`, which composes the blocks; the build saves
it (``evidence_index.json``) so that a model is queried with the same blocks
(``CellLM.predict_perturbation``). The phrases live in :mod:`~cellrlhf.data.evidence_phrases`.
"""

from __future__ import annotations

import numpy as np

from cellrlhf.cell2text.markup import format_cell
from cellrlhf.data.evidence_config import EvidenceConfig, EvidenceError
from cellrlhf.data.evidence_index import AverageText, EvidenceIndex, MeasuredUnit, pooled_keys
from cellrlhf.data.evidence_phrases import (
    EvidencePhrases,
    check_change_phrases,
    load_evidence_phrases,
)
from cellrlhf.data.schema import CONTROL_LABEL, perturbation_targets

__all__ = [
    "EvidencePhrases",
    "EvidenceBuilder",
    "change_classes",
    "load_evidence_phrases",
    "with_evidence",
    "evidence_features",
]


def with_evidence(messages: list[dict], block: str) -> list[dict]:
    """``messages`` with ``block`` and a blank line put before the user message's text."""
    return [
        {**m, "content": f"{block}\n\n{m['content']}"} if m["role"] == "user" else m
        for m in messages
    ]


def evidence_features():
    """``datasets`` type of the ``evidence_sources`` column."""
    from datasets import Value

    return [
        {
            "kind": Value("string"),
            "split": Value("string"),
            "perturbation": Value("string"),
            "cell_context": Value("string"),
        }
    ]


def change_classes(change, genes, tiers, max_genes: int):
    """The genes a change raises and lowers, in size classes.

    Parameters
    ----------
    change
        One value per gene (an item's mean expression minus the control mean).
    genes
        Gene symbols, in the order of ``change``.
    tiers
        Descending positive thresholds; a gene belongs to the first class it reaches (``|change|
        >= tier``) and is left out below the last.
    max_genes
        At most this many genes per direction, the largest changes kept.

    Returns
    -------
    ``(raised, lowered)``: each a list of ``(tier, genes)`` for the non-empty classes, largest
    class first, genes by decreasing size of change (ties by gene order).
    """
    change = np.asarray(change, dtype=np.float64)
    out = []
    for sign in (1.0, -1.0):
        signed = sign * change
        order = np.argsort(-signed, kind="stable")[:max_genes]
        order = order[signed[order] >= tiers[-1]]
        classes, start = [], 0
        for tier in tiers:
            end = start + int(np.sum(signed[order[start:]] >= tier))
            if end > start:
                classes.append((tier, [genes[i] for i in order[start:end]]))
            start = end
        out.append(classes)
    return out[0], out[1]


def _median_of_counts(counts: np.ndarray) -> float:
    """``np.median`` of the integers ``i`` each repeated ``counts[i]`` times (nan when none)."""
    total = int(counts.sum())
    if total == 0:
        return float("nan")
    cumulative = np.cumsum(counts)
    low = int(np.searchsorted(cumulative, (total - 1) // 2 + 1))
    high = int(np.searchsorted(cumulative, total // 2 + 1))
    return (low + high) / 2


class EvidenceBuilder:
    """Evidence blocks of (perturbation, context) pairs, from the build's group sums.

    Computes every text an evidence block can show (each measured unit's, each context's
    ``average_response`` with and without each measured perturbation) into an
    :class:`~cellrlhf.data.evidence_index.EvidenceIndex` (:attr:`index`), which composes the
    blocks: the build's prompts and later queries of a model go through the same code.

    Parameters
    ----------
    config
        :class:`~cellrlhf.data.evidence_config.EvidenceConfig`.
    references
        The build's :class:`~cellrlhf.data.references.References` (group keys, sums, lengths).
    phrases
        :class:`EvidencePhrases`.
    perturbation_text
        ``"A+B"`` -> ``"<pert> A B </pert>"`` (:meth:`PromptWriter.perturbation_text`).
    gene_table
        :class:`~cellrlhf.data.evidence_table.GeneTable` (``neighbours`` only).
    sort_targets
        Whether the data sorts a combination's targets (``schema.sort_targets``; recorded in
        the index).
    """

    #: splits whose cells evidence may use (only training cells; tests plant a leak here)
    SOURCE_SPLITS: tuple[str, ...] = ("train",)

    def __init__(
        self,
        config: EvidenceConfig,
        references,
        phrases,
        perturbation_text,
        gene_table=None,
        *,
        sort_targets: bool = True,
    ):
        if "neighbours" in config.kinds and gene_table is None:
            raise EvidenceError("evidence kind 'neighbours' needs a gene table.")
        check_change_phrases(config, phrases)
        self.config = config
        self.references = references
        self.phrases = phrases
        self.perturbation_text = perturbation_text
        self.gene_table = gene_table
        groups = references.groups
        units: dict[tuple[str, str], list[int]] = {}
        for gid, (split, pert, context) in enumerate(groups.keys):
            if split in self.SOURCE_SPLITS:
                units.setdefault((pert, context), []).append(gid)
        sums = references.scan.sums
        self._controls = {  # training control cells of each context (``change`` reference)
            context: gids
            for (pert, context), gids in units.items()
            if pert == CONTROL_LABEL and sum(int(sums.n[g]) for g in gids) > 0
        }
        self._units = {
            key: gids
            for key, gids in units.items()
            if key[0] != CONTROL_LABEL
            and sum(int(sums.n[g]) for g in gids) >= config.min_cells
            and (config.write == "profile" or key[1] in self._controls)
        }
        of_cell = groups.of_cell
        self._order = np.argsort(of_cell, kind="stable")
        self._bounds = np.searchsorted(of_cell[self._order], np.arange(len(groups.keys) + 1))
        self._blocks: dict[tuple[str, str], tuple[str, list[dict]]] = {}
        self.index = self._make_index(sort_targets)

    # ------------------------------------------------------------------ pseudo-bulks
    def _lengths(self, gids) -> np.ndarray:
        cells = [self._order[self._bounds[g] : self._bounds[g + 1]] for g in gids]
        return self.references.scan.n_genes[np.concatenate(cells)] if cells else np.zeros(0)

    def _profile(self, key: tuple[str, str]) -> np.ndarray:
        sums = self.references.scan.sums
        gids = self._controls[key[1]] if key[0] == CONTROL_LABEL else self._units[key]
        return sums.total[gids].sum(axis=0) / sums.n[gids].sum()

    def _minus_controls(self, profile: np.ndarray, context: str) -> np.ndarray:
        return np.asarray(profile, dtype=np.float64) - self._profile((CONTROL_LABEL, context))

    def _change_text(self, profile: np.ndarray, context: str) -> str:
        """``write: change``: ``profile`` minus the context's training control mean, written in
        size classes (:meth:`_change_words`)."""
        return self._change_words(self._minus_controls(profile, context))

    def _change_words(self, change: np.ndarray) -> str:
        """A change against controls written in size classes (:func:`change_classes`)."""
        config = self.config
        written = []
        for classes in change_classes(
            change, self.references.vocab.genes, config.change_tiers, config.change_genes
        ):
            parts = [f">={tier:g} {format_cell(' '.join(genes))}" for tier, genes in classes]
            written.append(" ".join(parts) if parts else self.phrases.line("change_none"))
        return self.phrases.line("change", up=written[0], down=written[1])

    def _written(self, profile: np.ndarray, name: str, lengths, context: str) -> str:
        """One measured item as the prompt shows it (``evidence.write``)."""
        if self.config.write == "change":
            return self._change_text(profile, context)
        return format_cell(self.references.profile_sentence(profile, name, lengths))

    # ------------------------------------------------------------------ the index
    def _make_index(self, sort_targets: bool) -> EvidenceIndex:
        """Every text of the evidence, computed once: the :class:`EvidenceIndex`."""
        split_of = [key[0] for key in self.references.groups.keys]
        profiles = {key: self._profile(key) for key in sorted(self._units)}
        units = {
            key: MeasuredUnit(
                self._written(
                    profiles[key],
                    f"evidence:{key[0]}:{key[1]}",
                    self._lengths(self._units[key]),
                    key[1],
                ),
                tuple(split_of[g] for g in self._units[key]),
                tuple(perturbation_targets(key[0])),
            )
            for key in profiles
        }
        averages, left_out = {}, {}
        if "average_response" in self.config.kinds:
            by_context: dict[str, list[str]] = {}
            for pert, context in profiles:
                by_context.setdefault(context, []).append(pert)
            for context, perts in by_context.items():
                # sums over the context once: leaving one out is then a subtraction
                total = np.sum([profiles[(p, context)] for p in perts], axis=0)
                lengths = [self._lengths(self._units[(p, context)]) for p in perts]
                counts = np.bincount(np.concatenate(lengths).astype(np.int64))
                summed = (total, counts, len(perts))
                averages[context] = self._average(profiles, summed, context, "")
                for pert in perts if len(perts) > 1 else []:
                    left_out[(pert, context)] = self._average(profiles, summed, context, pert)
        pooled = {}
        if self.config.pool_other_contexts:
            by_pert: dict[str, list[str]] = {}
            for pert, context in profiles:
                by_pert.setdefault(pert, []).append(context)
            for pert, contexts in by_pert.items():
                for key in pooled_keys(pert, contexts):
                    pooled[key] = self._change_words(self.mean_change([(pert, c) for c in key[1]]))
        table = self.gene_table
        return EvidenceIndex(
            self.config,
            self.phrases,
            units,
            {c: [split_of[g] for g in gids] for c, gids in self._controls.items()},
            averages,
            left_out,
            gene_table_path=self.config.neighbours.table if table is not None else None,
            gene_table_sha256=getattr(table, "sha256", None),
            sort_targets=sort_targets,
            perturbation_text=self.perturbation_text,
            pooled=pooled,
        )

    def _average(self, profiles: dict, summed: tuple, context: str, left_out: str):
        """The mean perturbed cell of ``context`` over its measured perturbations but
        ``left_out`` (each weighs 1), written; ``summed``: their profiles' sum, the histogram
        of their cells' lengths and their number."""
        total, counts, n = summed
        if left_out:
            own = profiles[(left_out, context)]
            lengths = self._lengths(self._units[(left_out, context)]).astype(np.int64)
            total, n = total - own, n - 1
            counts = counts - np.bincount(lengths, minlength=len(counts))
        name = f"evidence:average_response:{context}:{left_out}"
        median = np.array([_median_of_counts(counts)])
        return AverageText(self._written(total / n, name, median, context), n)

    # ------------------------------------------------------------------ public
    def measured_units(self) -> list[tuple[str, str]]:
        """The measured ``(perturbation, context)`` units (training cells), sorted."""
        return sorted(self._units)

    def has_controls(self, context: str) -> bool:
        """Whether ``context`` has training control cells."""
        return context in self._controls

    def control_group(self, context: str) -> int:
        """The group of ``context``'s training control cells."""
        (gid,) = self._controls[context]
        return gid

    def change(self, perturbation: str, context: str) -> np.ndarray:
        """A measured unit's mean expression minus its context's training control mean."""
        return self._minus_controls(self._profile((perturbation, context)), context)

    def mean_change(self, units) -> np.ndarray:
        """The mean of measured ``(perturbation, context)`` units' changes (:meth:`change`), each
        unit weighing 1: the pooled other-contexts line and the synthetic rows' added change."""
        return np.mean([self.change(*unit) for unit in units], axis=0)

    def change_sources(
        self, perturbation: str, context: str, kind: str = "components"
    ) -> list[dict]:
        """The groups :meth:`change` is computed from, as ``evidence_sources`` entries of
        ``kind``."""
        return self.index.sources(kind, [(perturbation, context)], controls=True)

    def block(self, perturbation: str, context: str) -> tuple[str, list[dict]]:
        """The evidence text of a prompt and the groups it was computed from
        (:meth:`EvidenceIndex.block <cellrlhf.data.evidence_index.EvidenceIndex.block>`).

        Returns
        -------
        ``(text, sources)``: the header and one line per item (``kinds`` order), and one
        ``{"kind", "split", "perturbation", "cell_context"}`` per group of cells used.
        """
        key = (perturbation, context)
        if key not in self._blocks:
            self._blocks[key] = self.index.block(perturbation, context, self.gene_table)
        text, sources = self._blocks[key]
        return text, [dict(s) for s in sources]
