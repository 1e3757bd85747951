"""Rows of the SFT and RL datasets, rendered from the plan, the kept sentences and references."""

from __future__ import annotations

import copy

import numpy as np

from cellrlhf.data.evidence import with_evidence
from cellrlhf.data.plan import task_rng
from cellrlhf.data.schema import CONTROL_LABEL, perturbation_targets

__all__ = ["sft_rows", "rl_rows"]


class _RenderRngs:
    """One template-drawing generator per (task, split), created on first use."""

    def __init__(self, seed: int):
        self.seed = seed
        self._rngs: dict[tuple[str, str], np.random.Generator] = {}

    def __call__(self, task: str, split: str) -> np.random.Generator:
        if (task, split) not in self._rngs:
            self._rngs[(task, split)] = task_rng(self.seed, "render", task, split)
        return self._rngs[(task, split)]


_EVIDENCE_TASKS = ("perturbation_response", "perturbation_effect")


def _add_evidence(row: dict, key: str, evidence, perturbation: str, context: str) -> None:
    """Put the evidence block before the user text of ``row[key]``; record its sources."""
    if evidence is None:
        return
    text, sources = evidence.block(perturbation, context)
    row[key] = with_evidence(row[key], text)
    row["evidence_sources"] = sources


def sft_rows(specs, table, references, writer, seed: int, evidence=None) -> dict[str, list[dict]]:
    """Instruction examples by split (shuffled, seeded).

    Parameters
    ----------
    specs
        :class:`~cellrlhf.data.plan.ExampleSpec` list.
    table
        :class:`~cellrlhf.data.plan.CellTable`.
    references
        :class:`~cellrlhf.data.references.References`.
    writer
        :class:`~cellrlhf.data.prompts.PromptWriter`.
    seed
        Build seed.
    evidence
        :class:`~cellrlhf.data.evidence.EvidenceBuilder`, or None (no evidence, no
        ``evidence_sources`` column).
    """
    rngs = _RenderRngs(seed)
    sentences = references.scan.sentences
    out: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for spec in specs:
        rng = rngs(spec.task, spec.split)
        cell_ids: list[str] = []
        if spec.task == "perturbation_effect":
            up, down = references.de_genes(spec.group, spec.control_group)
            messages, template = writer.effect(
                cell_context=spec.cell_context,
                perturbation=spec.perturbation,
                perturbation_type=spec.perturbation_type,
                up=up,
                down=down,
                rng=rng,
            )
        elif spec.task == "perturbation_response":
            cell_ids.append(str(table.cell_ids[spec.cell]))
            control_sentence = None
            if spec.context_mode == "control_cell":
                control_sentence = sentences[spec.control_cell]
                cell_ids.append(str(table.cell_ids[spec.control_cell]))
            elif spec.context_mode == "pseudobulk":
                control_sentence = references.pseudobulk_sentence(spec.control_group)
            messages, template = writer.response(
                cell_context=spec.cell_context,
                perturbation=spec.perturbation,
                perturbation_type=spec.perturbation_type,
                control_sentence=control_sentence,
                context_mode=spec.context_mode,
                rng=rng,
                answer_sentence=sentences[spec.cell],
            )
        else:
            cell_ids.append(str(table.cell_ids[spec.cell]))
            messages, template = writer.cell_task(
                spec.task,
                sentences[spec.cell],
                spec.cell_context,
                spec.perturbation,
                spec.perturbation_type,
                rng,
            )
        row = {
            "messages": messages,
            "task": spec.task,
            "perturbation": spec.perturbation,
            "cell_context": spec.cell_context,
            "cell_ids": cell_ids,
            "template": template,
        }
        if evidence is not None:
            row["evidence_sources"] = []
            if spec.task in _EVIDENCE_TASKS:
                _add_evidence(row, "messages", evidence, spec.perturbation, spec.cell_context)
        out[spec.split].append(row)
    for split, rows in out.items():
        order = task_rng(seed, "sft-shuffle", split).permutation(len(rows))
        out[split] = [rows[i] for i in order]
    return out


def rl_rows(specs, table, references, writer, seed: int, evidence=None) -> dict[str, list[dict]]:
    """RL prompts with their references, by split (``train``, ``test``; ``validation`` when
    validation perturbations were held out); ``evidence`` as in :func:`sft_rows`."""
    rngs = _RenderRngs(seed)
    sentences = references.scan.sentences
    groups = references.groups
    has_validation = any(spec.split == "validation" for spec in specs)
    splits = ("train", "validation", "test") if has_validation else ("train", "test")
    out: dict[str, list[dict]] = {split: [] for split in splits}
    for spec in specs:
        control_sentence = None
        if spec.context_mode == "control_cell":
            control_sentence = sentences[spec.prompt_control_cell]
        elif spec.context_mode == "pseudobulk":
            control_sentence = references.pseudobulk_sentence(spec.control_group)
        rng = rngs("rl", spec.split)
        twin_rng = copy.deepcopy(rng)  # the control twin draws the same template
        prompt, template = writer.response(
            cell_context=spec.cell_context,
            perturbation=spec.perturbation,
            perturbation_type=spec.perturbation_type,
            control_sentence=control_sentence,
            context_mode=spec.context_mode,
            rng=rng,
            answer_sentence=None,
        )
        control_prompt, _ = writer.response(
            cell_context=spec.cell_context,
            perturbation=CONTROL_LABEL,
            perturbation_type=spec.perturbation_type,
            control_sentence=control_sentence,
            context_mode=spec.context_mode,
            rng=twin_rng,
            answer_sentence=None,
        )
        up, down = references.de_genes(spec.group, spec.control_group)
        n_targets = len(perturbation_targets(spec.perturbation))
        row = {
            "prompt": prompt,
            # the same prompt about the control: the model's own reference (evaluation)
            "control_prompt": control_prompt,
            "perturbation": spec.perturbation,
            "cell_context": spec.cell_context,
            "perturbation_type": spec.perturbation_type,
            "split_kind": "combo" if n_targets > 1 else "single",
            "reference_perturbed": references.mean(spec.group).astype(np.float32),
            "reference_control": references.mean(spec.control_group).astype(np.float32),
            "decoded_control": references.decoded_control(
                spec.control_group, spec.control_cells
            ).astype(np.float32),
            "reference_sentences": [sentences[int(c)] for c in spec.reference_cells],
            "reference_cell_ids": [str(table.cell_ids[c]) for c in spec.reference_cells],
            "de_genes_up": up,
            "de_genes_down": down,
            "n_cells": int(groups.sizes[spec.group]),
            "n_control_cells": int(groups.sizes[spec.control_group]),
            "control_split": groups.keys[spec.control_group][0],
            "template": template,
        }
        if evidence is not None:
            row["control_prompt"] = with_evidence(
                control_prompt, evidence.block(CONTROL_LABEL, spec.cell_context)[0]
            )
        _add_evidence(row, "prompt", evidence, spec.perturbation, spec.cell_context)
        out[spec.split].append(row)
    return out
