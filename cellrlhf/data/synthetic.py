"""Synthetic combinations: SFT examples that teach a model to compose measured singles.

A data set has few combinations whose singles are both measured (Norman: 2 per training fold),
too few for a model to learn to read two ``components`` lines and answer with both changes. With
``evidence.synthetic_combinations: N`` the build adds ``N`` ``perturbation_response`` training
examples about combinations nobody measured, made from training cells only:

* a pair ``A+B`` of measured training singles of one context (each with at least
  ``evidence.min_cells`` training cells), never one that is a perturbation of the data in any
  split (a real combination trains on its real cells; a held-out one stays unseen);
* the answer is a synthetic cell: a training cell of one single (drawn at random, ``A`` or
  ``B``), plus the other single's mean change against the context's training controls, written
  as a cell sentence exactly as a real cell's. Changes smaller than
  ``evidence.synthetic_min_change`` are dropped (otherwise every unexpressed gene would take a
  tiny positive value and enter sentences of short cells); values are clipped at 0. The
  synthetic cell is the additive model of ``A+B`` with one real cell's noise;
* the prompt is written as every other ``perturbation_response`` prompt (the task's
  ``context`` mode and templates) with the evidence block of ``A+B``: the lines of ``A`` and
  ``B``.

Base and control cells are drawn from the training cells whose expression the build keeps for
the expression decoder (``decoder.max_cells``). Rows carry ``synthetic: true`` (the column exists
only in builds with the option) and the groups they were computed from in ``evidence_sources``
(the other single and the controls, beside the evidence block's own), which the leakage check
verifies like any evidence.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cellrlhf.data.evidence import with_evidence
from cellrlhf.data.plan import task_rng
from cellrlhf.data.schema import CONTROL_LABEL, perturbation_targets

__all__ = ["SyntheticCombinations", "synthetic_pairs"]


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


class SyntheticCombinations:
    """Makes the synthetic-combination training rows of a build.

    Parameters
    ----------
    evidence
        The build's :class:`~cellrlhf.data.evidence.EvidenceBuilder` (measured singles, their
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
        measured: dict[str, list[str]] = {}
        for pert, context in evidence.measured_units():
            if (
                len(perturbation_targets(pert)) == 1
                and (pert, context) in self.pool
                and evidence.has_controls(context)
            ):
                measured.setdefault(context, []).append(pert)
        known = {frozenset(t.upper() for t in perturbation_targets(p)) for p in set(table.perts)}
        self.pairs = synthetic_pairs(measured, known)
        self._changes: dict[tuple[str, str], np.ndarray] = {}

    def change(self, single: str, context: str) -> np.ndarray:
        """The single's mean change against the context's training controls, with changes
        smaller than ``synthetic_min_change`` set to 0."""
        key = (single, context)
        if key not in self._changes:
            change = self.evidence.change(single, context)
            change[np.abs(change) < self.min_change] = 0.0
            self._changes[key] = change
        return self._changes[key]

    def cells(self, n: int, seed: int):
        """``n`` synthetic cells: their pairs, base cells (table positions), added singles and
        sentences."""
        rng = task_rng(seed, "synthetic-combinations")
        picks = rng.integers(len(self.pairs), size=n)
        flips = rng.random(n) < 0.5
        plan, values = [], []
        for pick, flip in zip(picks.tolist(), flips.tolist(), strict=True):
            context, a, b = self.pairs[pick]
            base, added = (b, a) if flip else (a, b)
            pos = int(rng.choice(self.pool[(base, context)]))
            row = self.rows[pos].toarray().ravel() + self.change(added, context)
            values.append(np.clip(row, 0.0, None).astype(np.float32))
            plan.append((context, a, b, int(self.decoder_cells[pos]), added))
        matrix = sp.csr_matrix(np.vstack(values)) if values else sp.csr_matrix((0, 0))
        matrix.eliminate_zeros()
        names = [
            f"synthetic:{i}:{self.table.cell_ids[cell]}" for i, (*_, cell, _) in enumerate(plan)
        ]
        sentences = []
        if plan:
            texts, _ = self.sentence_writer.encode(matrix, names)
            sentences = texts.to_pylist()
        return plan, sentences, rng

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
            raise ValueError(
                "evidence.synthetic_combinations: no pair of measured training singles shares a "
                "context with training controls (or every pair is a perturbation of the data); "
                "set it to 0."
            )
        plan, sentences, rng = self.cells(n, seed)
        out = []
        for (context, a, b, cell, added), sentence in zip(plan, sentences, strict=True):
            mode = context_mode
            if mode == "mixed":
                mode = "control_cell" if rng.random() < 0.5 else "pseudobulk"
            mode, control_sentence, control_ids = self._control_sentence(mode, context, rng)
            perturbation = self.evidence.index.label([a, b])
            messages, template = writer.response(
                cell_context=context,
                perturbation=perturbation,
                perturbation_type=str(self.table.types[cell]),
                control_sentence=control_sentence,
                context_mode=mode,
                rng=rng,
                answer_sentence=sentence,
            )
            block, sources = self.evidence.block(perturbation, context)
            for source in self.evidence.change_sources(added, context):
                if source not in sources:
                    sources.append(source)
            out.append(
                {
                    "messages": with_evidence(messages, block),
                    "task": "perturbation_response",
                    "perturbation": perturbation,
                    "cell_context": context,
                    "cell_ids": [str(self.table.cell_ids[cell]), *control_ids],
                    "template": template,
                    "evidence_sources": sources,
                    "synthetic": True,
                }
            )
        return out

    def add_to(self, sft: dict, n: int, seed: int, writer, context_mode: str) -> dict:
        """Add :meth:`rows_for` rows to ``sft["train"]`` (reshuffled, seeded) and mark every
        row of ``sft`` ``synthetic`` or not; returns what was made (for the manifest)."""
        made = self.rows_for(n, seed, writer, context_mode)
        for rows in sft.values():
            for row in rows:
                row["synthetic"] = False
        train = sft["train"] + made
        order = task_rng(seed, "sft-shuffle-synthetic").permutation(len(train))
        sft["train"] = [train[i] for i in order]
        return {
            "examples": len(made),
            "pairs": len(self.pairs),
            "contexts": sorted({context for context, _, _ in self.pairs}),
        }
