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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from cellrlhf.cell2text.markup import format_cell
from cellrlhf.data.evidence_config import EvidenceConfig, EvidenceError
from cellrlhf.data.schema import CONTROL_LABEL, perturbation_targets

__all__ = [
    "EvidencePhrases",
    "EvidenceBuilder",
    "change_classes",
    "load_evidence_phrases",
    "with_evidence",
    "evidence_features",
]

_FORMAT = "cellrlhf.evidence_phrases"
_KEYS = (
    "header",
    "average_response",
    "average_response_missing",
    "component",
    "component_missing",
    "other_context",
    "other_contexts_missing",
    "neighbour",
    "neighbours_missing",
)
# needed only by ``evidence.write: change`` (older phrase files without it still load)
_OPTIONAL_KEYS = ("change", "change_none")


@dataclass(frozen=True)
class EvidencePhrases:
    """The lines of an evidence block (``templates/evidence.json``)."""

    version: int
    sha256: str
    lines: dict[str, str]

    def line(self, key: str, **values) -> str:
        return self.lines[key].format(**values)


# evidence about the cell context, not the perturbation: the only kinds a control prompt shows
_CONTEXT_KINDS = ("average_response",)


def load_evidence_phrases(directory: str | Path | None = None) -> EvidencePhrases:
    """Load ``evidence.json`` (packaged, or from ``directory`` when it has one)."""
    path = Path(directory) / "evidence.json" if directory else None
    if path is not None and path.exists():
        raw = path.read_bytes()
    else:
        raw = resources.files("cellrlhf.data").joinpath("templates", "evidence.json").read_bytes()
    payload = json.loads(raw)
    if payload.get("format") != _FORMAT:
        raise EvidenceError(f"evidence.json: format must be {_FORMAT!r}.")
    missing = [k for k in _KEYS if not isinstance(payload.get(k), str)]
    if missing:
        raise EvidenceError(f"evidence.json lacks the phrase(s) {missing}.")
    lines = {k: payload[k] for k in _KEYS}
    lines.update({k: payload[k] for k in _OPTIONAL_KEYS if isinstance(payload.get(k), str)})
    return EvidencePhrases(int(payload["version"]), hashlib.sha256(raw).hexdigest(), lines)


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


class EvidenceBuilder:
    """Evidence blocks of (perturbation, context) pairs, from the build's group sums.

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
    """

    #: splits whose cells evidence may use (only training cells; tests plant a leak here)
    SOURCE_SPLITS: tuple[str, ...] = ("train",)

    def __init__(
        self, config: EvidenceConfig, references, phrases, perturbation_text, gene_table=None
    ):
        if "neighbours" in config.kinds and gene_table is None:
            raise EvidenceError("evidence kind 'neighbours' needs a gene table.")
        if config.write == "change":
            missing = [k for k in _OPTIONAL_KEYS if k not in phrases.lines]
            if missing:
                raise EvidenceError(
                    f"evidence.write: change needs the phrase(s) {missing} in evidence.json; "
                    "copy them from the packaged cellrlhf/data/templates/evidence.json."
                )
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
        self._by_context: dict[str, list[str]] = {}
        self._by_pert: dict[str, list[str]] = {}
        for pert, context in sorted(self._units):
            self._by_context.setdefault(context, []).append(pert)
            self._by_pert.setdefault(pert, []).append(context)
        of_cell = groups.of_cell
        self._order = np.argsort(of_cell, kind="stable")
        self._bounds = np.searchsorted(of_cell[self._order], np.arange(len(groups.keys) + 1))
        self._blocks: dict[tuple[str, str], tuple[str, list[dict]]] = {}
        self._sentences: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ pseudo-bulks
    def _lengths(self, gids) -> np.ndarray:
        cells = [self._order[self._bounds[g] : self._bounds[g + 1]] for g in gids]
        return self.references.scan.n_genes[np.concatenate(cells)] if cells else np.zeros(0)

    def _profile(self, key: tuple[str, str]) -> np.ndarray:
        sums = self.references.scan.sums
        gids = self._controls[key[1]] if key[0] == CONTROL_LABEL else self._units[key]
        return sums.total[gids].sum(axis=0) / sums.n[gids].sum()

    def _change_text(self, profile: np.ndarray, context: str) -> str:
        """``write: change``: ``profile`` minus the context's training control mean, written in
        size classes (:func:`change_classes`)."""
        change = np.asarray(profile, dtype=np.float64) - self._profile((CONTROL_LABEL, context))
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

    def _unit_text(self, key: tuple[str, str]) -> str:
        if key not in self._sentences:
            self._sentences[key] = self._written(
                self._profile(key),
                f"evidence:{key[0]}:{key[1]}",
                self._lengths(self._units[key]),
                key[1],
            )
        return self._sentences[key]

    def _sources(self, kind: str, keys) -> list[dict]:
        groups = self.references.groups
        sources = [
            {"kind": kind, "split": groups.keys[g][0], "perturbation": p, "cell_context": c}
            for p, c in keys
            for g in self._units[(p, c)]
        ]
        if self.config.write == "change":  # each change is taken against training controls
            for context in dict.fromkeys(c for _, c in keys):
                sources += [
                    {"kind": kind, "split": groups.keys[g][0], "perturbation": CONTROL_LABEL,
                     "cell_context": context}
                    for g in self._controls[context]
                ]  # fmt: skip
        return sources

    # ------------------------------------------------------------------ kinds
    def _average(self, perturbation: str, context: str):
        others = [p for p in self._by_context.get(context, []) if p != perturbation]
        if not others:
            return [self.phrases.line("average_response_missing", cell_context=context)], []
        keys = [(p, context) for p in others]
        profile = np.mean([self._profile(k) for k in keys], axis=0)
        lengths = np.concatenate([self._lengths(self._units[k]) for k in keys])
        left_out = perturbation if (perturbation, context) in self._units else ""
        cell = self._written(
            profile, f"evidence:average_response:{context}:{left_out}", lengths, context
        )
        line = self.phrases.line("average_response", cell_context=context, n=len(others), cell=cell)
        return [line], self._sources("average_response", keys)

    def _components(self, perturbation: str, context: str):
        targets = perturbation_targets(perturbation)
        if len(targets) < 2 and not self.config.components_of_singles:
            return [], []
        lines, keys = [], []
        for target in targets:
            text = self.perturbation_text(target)
            if (target, context) in self._units:
                keys.append((target, context))
                cell = self._unit_text((target, context))
                lines.append(
                    self.phrases.line(
                        "component", perturbation=text, cell_context=context, cell=cell
                    )
                )
            else:
                lines.append(
                    self.phrases.line("component_missing", perturbation=text, cell_context=context)
                )
        return lines, self._sources("components", keys)

    def _other_contexts(self, perturbation: str, context: str):
        others = [c for c in self._by_pert.get(perturbation, []) if c != context]
        if not others:
            return [self.phrases.line("other_contexts_missing")], []
        keys = [(perturbation, c) for c in others]
        lines = [
            self.phrases.line("other_context", other_context=c, cell=self._unit_text(k))
            for c, k in zip(others, keys, strict=True)
        ]
        return lines, self._sources("other_contexts", keys)

    def _neighbours(self, perturbation: str, context: str):
        table = self.gene_table
        targets = perturbation_targets(perturbation)
        target_vector = table.vector(targets)
        if target_vector is None:
            reason = f"{' '.join(table.missing(targets))} not in the gene table"
            return [
                self.phrases.line("neighbours_missing", cell_context=context, reason=reason)
            ], []
        upper = {t.upper() for t in targets}
        scored = []
        for pert in self._by_context.get(context, []):
            candidate = perturbation_targets(pert)
            if pert == perturbation or upper & {t.upper() for t in candidate}:
                continue
            vector = table.vector(candidate)
            if vector is not None:
                scored.append((-float(vector @ target_vector), pert))
        if not scored:
            reason = "no other measured perturbation of this context is in the gene table"
            return [
                self.phrases.line("neighbours_missing", cell_context=context, reason=reason)
            ], []
        chosen = sorted(scored)[: self.config.neighbours.k]
        lines = [
            self.phrases.line(
                "neighbour",
                perturbation=self.perturbation_text(pert),
                similarity=f"{-score:.2f}",
                cell_context=context,
                cell=self._unit_text((pert, context)),
            )
            for score, pert in chosen
        ]
        return lines, self._sources("neighbours", [(p, context) for _, p in chosen])

    # ------------------------------------------------------------------ public
    def block(self, perturbation: str, context: str) -> tuple[str, list[dict]]:
        """The evidence text of a prompt and the groups it was computed from.

        Returns
        -------
        ``(text, sources)``: the header and one line per item (``kinds`` order), and one
        ``{"kind", "split", "perturbation", "cell_context"}`` per group of cells used.
        """
        key = (perturbation, context)
        if key not in self._blocks:
            makers = {
                "average_response": self._average,
                "components": self._components,
                "other_contexts": self._other_contexts,
                "neighbours": self._neighbours,
            }
            lines = [self.phrases.line("header")]
            sources: list[dict] = []
            # a control prompt (the model's own reference) carries the context's evidence only
            kinds = [k for k in self.config.kinds if k in _CONTEXT_KINDS]
            for kind in kinds if perturbation == CONTROL_LABEL else self.config.kinds:
                kind_lines, kind_sources = makers[kind](perturbation, context)
                lines += kind_lines
                sources += kind_sources
            self._blocks[key] = ("\n".join(lines), sources)
        text, sources = self._blocks[key]
        return text, [dict(s) for s in sources]
