"""How :func:`~cellrlhf.evaluation.prediction.predict` samples a model and checks its answers.

Prompts are answered as the RL trainers sample (temperature 1.0, no top-k / top-p truncation:
the distribution RL optimised). A policy is sampled the way it was trained: an RL policy trained
with ``constrain_cells`` (its ``cellrlhf.json`` says so) under the same single-cell answer
grammar (:class:`~cellrlhf.cell2text.sentence_constraints.CellSentenceConstraint` with
``single_cell_answer=True``), every other model unconstrained, unless ``constrain_cells`` says
otherwise; a grammar row (``sft_grammar``,
:func:`~cellrlhf.evaluation.model_dirs.with_grammar_rows`) under the grammar whatever its model
says. Under the grammar every finished answer is valid by construction, so a constrained
model's own validity is measured too, on a smaller unconstrained sample
(``validity["unconstrained"]``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

__all__ = [
    "PredictionRun",
    "SampledAnswers",
    "constrained_mode",
    "prompt_rows",
    "sample_prompts",
    "sampling_settings",
    "sentence_settings",
]

logger = logging.getLogger(__name__)


def sentence_settings(manifest: dict) -> dict:
    """The dataset's ``sentences`` config (``top_k``, ``seed``...), ``{}`` when not recorded."""
    return (manifest.get("config") or {}).get("sentences") or {}


def _answer_budget(manifest: dict, info: dict, n_genes: int) -> int:
    """Sentence length + markup tokens (genes-as-text spends several tokens per gene)."""
    top_k = sentence_settings(manifest).get("top_k") or n_genes
    per_gene = 4 if info.get("tokenizer_mode") == "genes_as_text" else 1
    return int(top_k) * per_gene + 8


def constrained_mode(constrain_cells: bool | None, info: dict, name: str) -> tuple[bool, str]:
    """Whether model ``name`` (its ``cellrlhf.json``: ``info``) is sampled under the cell
    grammar, and why (recorded in ``params``): the argument, a grammar row, or as trained."""
    from cellrlhf.evaluation.model_dirs import is_grammar_row

    if constrain_cells is not None:
        return bool(constrain_cells), "argument"
    if is_grammar_row(name):
        return True, "grammar row"
    return bool(info.get("constrain_cells", False)), "cellrlhf.json"


def sampling_settings(loaded, manifest, name, max_new_tokens, temperature, seed, constrain_cells):
    """Plain sampling as RL samples (no top-k / top-p), under the cell grammar when the model
    is constrained; and where ``constrain_cells`` came from."""
    from cellrlhf.sampling import GenerationSettings

    budget = max_new_tokens or _answer_budget(manifest, loaded.info, len(loaded.vocab))
    constrained, constrained_by = constrained_mode(constrain_cells, loaded.info, name)
    if constrained and constrained_by == "cellrlhf.json":
        logger.info(
            "%s was trained as a constrained policy (constrain_cells in its cellrlhf.json): "
            "sampled under the same grammar (constrain_cells=False to see its own samples)",
            name,
        )
    settings = GenerationSettings(
        max_new_tokens=budget,
        temperature=temperature,
        top_p=1.0,
        top_k=0,
        seed=seed,
        constrain_cells=constrained,
        single_cell_answer=constrained,
    )
    return settings, constrained_by


def _validity(report, extracted, finished: np.ndarray) -> dict:
    found = np.asarray([e.found for e in extracted], dtype=bool)
    closed = np.asarray([e.closed for e in extracted], dtype=bool)
    out = {k: v for k, v in report.to_dict().items() if not isinstance(v, (list, dict))}
    out.update(
        marked_fraction=float(found.mean()) if len(found) else 0.0,
        unclosed_fraction=float((found & ~closed).sum() / max(found.sum(), 1)),
        finished_fraction=float(finished.mean()) if len(finished) else 0.0,
    )
    return out


@dataclass
class SampledAnswers:
    """Sampled answers, decoded: the cells, what ``obs`` records of each, and their validity."""

    X: np.ndarray
    sentences: list[str]
    valid: np.ndarray
    valid_gene_fraction: np.ndarray
    n_genes: np.ndarray
    closed: np.ndarray
    finished: np.ndarray
    validity: dict


@dataclass(frozen=True)
class PredictionRun:
    """What one :func:`~cellrlhf.evaluation.prediction.predict` call samples with: the model,
    the prompts and their settings."""

    name: str
    model_dir: Path
    dataset_dir: Path
    manifest: dict
    model_stage: str
    generator: object  # cellrlhf.sampling.Sampler of the model
    decoder: object  # the dataset's ExpressionDecoder
    rows: object  # the chosen rl/test rows (datasets.Dataset)
    indices: np.ndarray
    cells_per_prompt: int
    settings: object  # cellrlhf.sampling.GenerationSettings
    constrained_by: str
    reference: str
    reference_by: str
    batch_size: int
    progress: bool

    def answers(self, prompts: list[str], settings, what: str) -> SampledAnswers:
        """Answers of ``prompts`` under ``settings``, decoded with the dataset's decoder."""
        from cellrlhf.cell2text.markup import extract_cell
        from cellrlhf.ppo.sample_checks import fully_valid_cells

        completions = self.generator.generate(
            prompts,
            settings,
            batch_size=self.batch_size,
            progress=self.progress,
            desc=f"{what} {self.name}",
        )
        extracted = [extract_cell(c.text) for c in completions]
        X, report = self.decoder.decode([e.sentence for e in extracted])
        finished = np.asarray([c.finished for c in completions], dtype=bool)
        texts = [c.text for c in completions]
        # the same definition as RL's step metric: the answers' own report (markup read)
        valid = fully_valid_cells(self.decoder.decode(texts)[1], texts, finished)
        valid &= np.asarray(report.n_truncated) == 0
        validity = _validity(report, extracted, finished)
        validity["valid_cell_fraction"] = float(np.mean(valid)) if len(valid) else 0.0
        return SampledAnswers(
            X=X,
            sentences=[e.sentence for e in extracted],
            valid=valid,
            valid_gene_fraction=report.valid_fractions.astype(np.float32),
            n_genes=report.n_valid.astype(np.int64),
            closed=np.asarray([e.closed for e in extracted], dtype=bool),
            finished=finished,
            validity=validity,
        )

    def per_prompt(self, n: int, settings, what: str) -> SampledAnswers:
        """``n`` answers to each prompt, prompt by prompt (rows of :func:`prompt_rows`)."""
        prompts = list(self.rows["prompt"])
        return self.answers([prompts[i] for i in prompt_rows(self.rows, n)], settings, what)


def prompt_rows(rows, n: int) -> np.ndarray:
    """The row of each answer when every row is answered ``n`` times."""
    return np.repeat(np.arange(len(rows)), n)


def sample_prompts(run: PredictionRun, unconstrained_validity_cells: int) -> SampledAnswers:
    """``cells_per_prompt`` answers to every prompt; a constrained run also measures the
    validity of a smaller unconstrained sample (``validity["unconstrained"]``)."""
    constrained = bool(run.settings.constrain_cells)
    logger.info(
        "%s: sampling %d cells for each of %d held-out prompts (temperature %.2f, %d tokens%s)",
        run.name,
        run.cells_per_prompt,
        len(run.rows),
        run.settings.temperature,
        run.settings.max_new_tokens,
        ", constrained to one valid cell" if constrained else "",
    )
    answers = run.per_prompt(run.cells_per_prompt, run.settings, "sample")
    answers.validity["constrained"] = constrained
    n_free = min(int(unconstrained_validity_cells), run.cells_per_prompt)
    if constrained and n_free > 0:
        free = replace(run.settings, constrain_cells=False, single_cell_answer=False)
        unconstrained = run.per_prompt(n_free, free, "unconstrained").validity
        answers.validity["unconstrained"] = {**unconstrained, "cells_per_prompt": n_free}
    return answers
