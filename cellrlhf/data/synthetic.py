"""Synthetic training rows: SFT examples that teach a model to read its evidence.

A data set rarely has enough real examples for a model to learn to read an evidence block:
Norman has 2 combinations per training fold whose singles are both measured; McFaline's
training pairs change so little beside their noise that the other lines predict them at r ~0.15,
less than what a perturbation's name and line let a model memorise. Two build options add
``perturbation_response`` training examples whose answer follows from the evidence in their
prompt, made from training cells only:

``evidence.synthetic_combinations: N`` (with ``components``)
    ``N`` examples about a pair ``A+B`` of measured training singles of one context (each with
    at least ``evidence.min_cells`` training cells), never one that is a perturbation of the
    data in any split (a real combination trains on its real cells; a held-out one stays
    unseen). The answer is a training cell of one single (drawn at random, ``A`` or ``B``) plus
    the other single's mean change against the context's training controls: the additive model
    of ``A+B`` with one real cell's noise. The prompt shows the lines of ``A`` and ``B``.
``evidence.synthetic_transfers: N`` (with ``other_contexts``)
    ``N`` examples about a perturbation ``P`` in a context ``C`` where ``P`` is measured in other
    contexts, never a pair that has cells but none in training (a held-out pair stays unseen);
    a training pair is posed again beside its real cells. The answer is a training control cell
    of ``C`` plus ``P``'s mean change in the other contexts (each against its own training
    controls, each context weighing 1): the ``context_transfer`` model with one real cell's
    noise. The prompt shows ``P`` in the other contexts, as every ``other_contexts`` prompt does.

Changes smaller than ``evidence.synthetic_min_change`` are not added (otherwise every
unexpressed gene would take a tiny positive value and enter sentences of short cells); values
are clipped at 0; the synthetic cell is written as a cell sentence exactly as a real cell's.
``evidence.synthetic_apply: detection`` adds a positive change to a gene the base cell does not
express as a chance of switching it on at its typical level (its mean non-zero value in the
training cells kept for the decoder), ``change / level``, drawn from its own seeded stream: the
same expected change, without the extra genes a shift gives every synthetic cell (a mean change
estimated from ~100 cells passes 0.1 on many genes by noise alone). The
prompt is written as every other ``perturbation_response`` prompt (the task's ``context`` mode
and templates) with the evidence block of its (perturbation, context).

Base and control cells are drawn from the training cells whose expression the build keeps for
the expression decoder (``decoder.max_cells``). Rows carry ``synthetic: true`` (the column exists
only in builds with an option) and the groups they were computed from in ``evidence_sources``
(the added changes and their controls, beside the evidence block's own), which the leakage check
verifies like any evidence.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from cellrlhf.cell2text.markup import extract_cell
from cellrlhf.data.evidence import with_evidence
from cellrlhf.data.plan import task_rng
from cellrlhf.data.schema import CONTROL_LABEL, perturbation_targets

__all__ = ["SyntheticCombinations", "SyntheticTransfers", "synthetic_pairs", "transfer_pairs"]

logger = logging.getLogger(__name__)

# synthetic answers this many times as long as real ones get a warning
LENGTH_WARNING = 1.25


def genes_per_answer(rows) -> float:
    """Mean number of genes in the answer cells of ``perturbation_response`` rows (NaN: none)."""
    counts = []
    for row in rows:
        if row.get("task") != "perturbation_response":
            continue
        cell = extract_cell(row["messages"][-1]["content"])
        if cell.found:
            counts.append(len(cell.sentence.split()))
    return float(np.mean(counts)) if counts else float("nan")


def synthetic_pairs(measured: dict[str, list[str]], known: set[frozenset]) -> list[tuple]:
    """The ``(context, a, b)`` pairs synthetic combinations are made of.

    Parameters
    ----------
    measured
        Context -> measured training singles with base cells.
    known
        Target sets (upper case) of every perturbation of the data, in any split: never made.

    Returns
    -------
    Sorted ``(context, a, b)`` with ``a < b`` (case-insensitive).
    """
    pairs = []
    for context in sorted(measured):
        singles = sorted(set(measured[context]), key=str.upper)
        for i, a in enumerate(singles):
            for b in singles[i + 1 :]:
                if frozenset((a.upper(), b.upper())) not in known:
                    pairs.append((context, a, b))
    return pairs


def transfer_pairs(
    measured: dict[str, list[str]], bases: set[str], held_out: set[tuple[str, str]]
) -> list[tuple]:
    """The ``(context, perturbation)`` pairs synthetic transfers are made of.

    Parameters
    ----------
    measured
        Perturbation -> the contexts (with training controls) where it is measured in training.
    bases
        Contexts with training control cells to start an answer from.
    held_out
        ``(perturbation, context)`` pairs with cells but none in training: never made.

    Returns
    -------
    Sorted ``(context, perturbation)``: every base context and perturbation measured in at
    least one other context.
    """
    pairs = []
    for context in sorted(bases):
        for pert in sorted(measured, key=str.upper):
            others = [c for c in measured[pert] if c != context]
            if others and (pert, context) not in held_out:
                pairs.append((context, pert))
    return pairs


class _SyntheticRows:
    """What both kinds of synthetic rows share: the cells they start from, the changes they add,
    the prompts and the rows (subclasses plan which cell gets which change).

    Parameters
    ----------
    evidence
        The build's :class:`~cellrlhf.data.evidence.EvidenceBuilder` (measured units, their
        changes, the evidence blocks).
    table
        :class:`~cellrlhf.data.plan.CellTable`.
    references
        :class:`~cellrlhf.data.references.References` (control pseudo-bulk sentences).
    decoder_cells, decoder_rows
        Cell positions and transformed expression (vocabulary order) of the decoder's cells.
    sentence_writer
        :class:`~cellrlhf.data.sentences.SentenceWriter` of the build.
    """

    #: the config option (messages) and the name of its random stream
    option = ""
    #: what :meth:`rows_for` says when there is nothing to make
    nothing_to_make = ""
    #: the evidence kind the added changes are recorded under (``evidence_sources``)
    source_kind = ""

    def __init__(self, evidence, table, references, decoder_cells, decoder_rows, sentence_writer):
        self.evidence = evidence
        self.table = table
        self.references = references
        self.rows = sp.csr_matrix(decoder_rows)
        self.sentence_writer = sentence_writer
        self.min_change = evidence.config.synthetic_min_change
        train = table.labels[decoder_cells] == "train"
        self.pool: dict[tuple[str, str], np.ndarray] = {}  # (pert, context) -> decoder rows
        perts, contexts = table.perts[decoder_cells], table.contexts[decoder_cells]
        for pos in np.flatnonzero(train):
            self.pool.setdefault((perts[pos], contexts[pos]), []).append(pos)
        self.pool = {k: np.asarray(v) for k, v in self.pool.items()}
        self.decoder_cells = np.asarray(decoder_cells)
        self.apply = evidence.config.synthetic_apply
        kept = self.rows[np.flatnonzero(train)]
        counts, sums = np.diff(kept.tocsc().indptr), np.asarray(kept.sum(axis=0)).ravel()
        # each gene's typical level: its mean non-zero value in training cells
        self.levels = np.divide(sums, counts, out=np.zeros(len(sums)), where=counts > 0)
        self._changes: dict[tuple, np.ndarray] = {}
        self.pairs: list[tuple] = self._find_pairs()

    def _find_pairs(self) -> list[tuple]:
        """What the rows are about: ``(context, ...)`` tuples, sorted."""
        raise NotImplementedError

    def change(self, units) -> np.ndarray:
        """The mean change of measured ``(perturbation, context)`` units (each against its
        context's training controls, each unit weighing 1), with changes smaller than
        ``synthetic_min_change`` set to 0."""
        key = tuple(units)
        if key not in self._changes:
            change = self.evidence.mean_change(key)
            change[np.abs(change) < self.min_change] = 0.0
            self._changes[key] = change
        return self._changes[key]

    def _plan(self, n: int, rng) -> list[tuple]:
        """``n`` ``(context, perturbation, base position, added change, added units, type)``."""
        raise NotImplementedError

    def cells(self, n: int, seed: int):
        """``n`` synthetic cells: their plan (see :meth:`_plan`), sentences and the random
        stream the prompts go on with."""
        rng = task_rng(seed, self.option.replace("_", "-"))
        plan = self._plan(n, rng)
        draws = task_rng(seed, self.option.replace("_", "-") + "-detection")
        values = [self._applied(pos, added, draws) for _, _, pos, added, _, _ in plan]
        matrix = sp.csr_matrix(np.vstack(values)) if values else sp.csr_matrix((0, 0))
        matrix.eliminate_zeros()
        names = [
            f"synthetic:{i}:{self.table.cell_ids[self.decoder_cells[item[2]]]}"
            for i, item in enumerate(plan)
        ]
        sentences = []
        if plan:
            texts, _ = self.sentence_writer.encode(matrix, names)
            sentences = texts.to_pylist()
        return plan, sentences, rng

    def _applied(self, pos: int, added: np.ndarray, rng) -> np.ndarray:
        """Base cell ``pos`` with the change ``added`` (``evidence.synthetic_apply``)."""
        base = self.rows[pos].toarray().ravel().astype(np.float64)
        if self.apply == "shift":
            return np.clip(base + added, 0.0, None).astype(np.float32)
        out = base + np.where(base > 0, added, 0.0)
        off = np.flatnonzero((base <= 0) & (added > 0))
        level = np.maximum(self.levels[off], added[off])
        out[off] = np.where(rng.random(off.size) < added[off] / level, level, 0.0)
        return np.clip(out, 0.0, None).astype(np.float32)

    def _control_sentence(self, mode: str, context: str, rng) -> tuple[str, str | None, list]:
        """The prompt's context mode, control sentence and control cell ids."""
        if mode == "none":
            return mode, None, []
        pool = self.pool.get((CONTROL_LABEL, context))
        if mode == "pseudobulk" or pool is None:  # no kept control cell: the pseudo-bulk
            group = self.evidence.control_group(context)
            return "pseudobulk", self.references.pseudobulk_sentence(group), []
        pos = int(rng.choice(pool))
        cell = int(self.decoder_cells[pos])
        texts, _ = self.sentence_writer.encode(self.rows[pos], [self.table.cell_ids[cell]])
        return mode, texts.to_pylist()[0], [str(self.table.cell_ids[cell])]

    def rows_for(self, n: int, seed: int, writer, context_mode: str) -> list[dict]:
        """``n`` training rows (the ``sft`` layout plus ``synthetic``), seeded.

        ``context_mode`` is the ``perturbation_response`` task's ``context`` (``mixed``: half
        a control cell, half the control pseudo-bulk, drawn per row).
        """
        if n and not self.pairs:
            raise ValueError(f"evidence.{self.option}: {self.nothing_to_make}; set it to 0.")
        plan, sentences, rng = self.cells(n, seed)
        out = []
        for (context, perturbation, pos, _, units, ptype), sentence in zip(
            plan, sentences, strict=True
        ):
            mode = context_mode
            if mode == "mixed":
                mode = "control_cell" if rng.random() < 0.5 else "pseudobulk"
            mode, control_sentence, control_ids = self._control_sentence(mode, context, rng)
            messages, template = writer.response(
                cell_context=context,
                perturbation=perturbation,
                perturbation_type=ptype,
                control_sentence=control_sentence,
                context_mode=mode,
                rng=rng,
                answer_sentence=sentence,
            )
            block, sources = self.evidence.block(perturbation, context)
            for unit in units:
                for source in self.evidence.change_sources(*unit, kind=self.source_kind):
                    if source not in sources:
                        sources.append(source)
            base = str(self.table.cell_ids[self.decoder_cells[pos]])
            out.append(
                {
                    "messages": with_evidence(messages, block),
                    "task": "perturbation_response",
                    "perturbation": perturbation,
                    "cell_context": context,
                    "cell_ids": [base, *control_ids],
                    "template": template,
                    "evidence_sources": sources,
                    "synthetic": True,
                }
            )
        return out

    def add_to(self, sft: dict, n: int, seed: int, writer, context_mode: str) -> dict:
        """Add :meth:`rows_for` rows to ``sft["train"]`` (reshuffled, seeded) and mark every
        other row of ``sft`` not ``synthetic``; returns what was made (for the manifest)."""
        made = self.rows_for(n, seed, writer, context_mode)
        for rows in sft.values():
            for row in rows:
                row.setdefault("synthetic", False)
        lengths = {"real": genes_per_answer(sft["train"]), "synthetic": genes_per_answer(made)}
        train = sft["train"] + made
        order = task_rng(seed, "sft-shuffle-synthetic").permutation(len(train))
        sft["train"] = [train[i] for i in order]
        if self.apply == "shift" and lengths["synthetic"] > LENGTH_WARNING * lengths["real"]:
            logger.warning(
                "evidence.%s: synthetic answers carry %.0f genes per cell where real training "
                "answers carry %.0f; a model trained on them writes cells that are too long. Set "
                "evidence.synthetic_apply: detection (docs/evidence.md).",
                self.option,
                lengths["synthetic"],
                lengths["real"],
            )
        return {
            "examples": len(made),
            "pairs": len(self.pairs),
            "contexts": sorted({pair[0] for pair in self.pairs}),
            "genes_per_answer": {k: round(v, 2) for k, v in lengths.items()},
        }


class SyntheticCombinations(_SyntheticRows):
    """Makes the synthetic-combination training rows of a build (``A+B`` from ``A`` and ``B``).

    Parameters: as :class:`_SyntheticRows`.
    """

    option = "synthetic_combinations"
    source_kind = "components"
    nothing_to_make = (
        "no pair of measured training singles shares a context with training controls (or "
        "every pair is a perturbation of the data)"
    )

    def _find_pairs(self) -> list[tuple]:
        measured: dict[str, list[str]] = {}
        for pert, context in self.evidence.measured_units():
            if (
                len(perturbation_targets(pert)) == 1
                and (pert, context) in self.pool
                and self.evidence.has_controls(context)
            ):
                measured.setdefault(context, []).append(pert)
        perts = set(self.table.perts)
        known = {frozenset(t.upper() for t in perturbation_targets(p)) for p in perts}
        return synthetic_pairs(measured, known)

    def _plan(self, n: int, rng) -> list[tuple]:
        picks = rng.integers(len(self.pairs), size=n)
        flips = rng.random(n) < 0.5
        plan = []
        for pick, flip in zip(picks.tolist(), flips.tolist(), strict=True):
            context, a, b = self.pairs[pick]
            base, added = (b, a) if flip else (a, b)
            pos = int(rng.choice(self.pool[(base, context)]))
            ptype = str(self.table.types[self.decoder_cells[pos]])
            label = self.evidence.index.label([a, b])
            plan.append(
                (context, label, pos, self.change([(added, context)]), [(added, context)], ptype)
            )
        return plan


class SyntheticTransfers(_SyntheticRows):
    """Makes the synthetic-transfer training rows of a build (``P`` in ``C`` from ``P`` in the
    other contexts).

    Parameters: as :class:`_SyntheticRows`.
    """

    option = "synthetic_transfers"
    source_kind = "other_contexts"
    nothing_to_make = (
        "no perturbation is measured in training in a context other than one with training "
        "control cells (or every such pair is held out)"
    )

    def _find_pairs(self) -> list[tuple]:
        evidence, table = self.evidence, self.table
        self.measured: dict[str, list[str]] = {}
        for pert, context in evidence.measured_units():
            if evidence.has_controls(context):
                self.measured.setdefault(pert, []).append(context)
        bases = {
            context
            for pert, context in self.pool
            if pert == CONTROL_LABEL and evidence.has_controls(context)
        }
        train = table.labels == "train"
        with_cells = set(zip(table.perts, table.contexts, strict=True))
        trained = set(zip(table.perts[train], table.contexts[train], strict=True))
        self.types = dict(zip(table.perts[train], table.types[train], strict=True))
        return transfer_pairs(self.measured, bases, with_cells - trained)

    def _plan(self, n: int, rng) -> list[tuple]:
        picks = rng.integers(len(self.pairs), size=n)
        plan = []
        for pick in picks.tolist():
            context, pert = self.pairs[pick]
            units = [(pert, c) for c in self.measured[pert] if c != context]
            pos = int(rng.choice(self.pool[(CONTROL_LABEL, context)]))
            plan.append((context, pert, pos, self.change(units), units, str(self.types[pert])))
        return plan
