"""Generation-based evaluation of cell language models on a held-out slice.

Perplexity says how well a model scores real answers; these metrics say how good its own answers
are. On a fixed, seeded slice of held-out examples the model answers by generation and:

- text answers (cell type, cell line, ...) are compared with the reference: accuracy per task;
- cell-sentence answers are decoded with the dataset's :class:`ExpressionDecoder`: valid gene
  fraction, duplicate fraction, empty and unclosed fractions, mean length (beside the reference's);
- perturbation prompts with real reference profiles (the dataset's ``rl/`` split) get the reward's
  fidelity metric, ``pearson_delta`` of the pseudo-bulk of ``fidelity_cells`` sampled cells against
  the real pseudo-bulk, both relative to the decoded control (pseudo-bulks need >= 64 cells to be
  stable; fewer gives noisy figures).

With ``constrain_cells=True`` cell answers are generated a second time under constrained decoding
(:class:`~cellrlhf.cell2text.sentence_constraints.CellSentenceConstraint`: inside a cell, only
measured genes not yet written, or ``</cell>``) and reported as ``gen_constrained_*`` beside the
unconstrained ``gen_*``. The unconstrained figures are what the RL stage sees (its trainers
sample without the constraint, since TRL recomputes log-probabilities without logits
processors); the constrained ones are what users get with ``CellLM(constrain_cells=True)``.

Work is split over processes and gathered, so it runs unchanged under DDP and DeepSpeed (ZeRO-3
generation uses ``synced_gpus``).
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cellrlhf.cell2text.markup import CELL_START, CONTROL_PERT, extract_cell

__all__ = [
    "GenerationExample",
    "FidelityReference",
    "GenerationEvaluator",
    "sft_generation_examples",
    "pretrain_generation_examples",
    "fidelity_references",
    "text_answer_metrics",
    "cell_answer_metrics",
    "normalize_answer",
]

logger = logging.getLogger(__name__)

_CONTROL_LABELS = {"control", CONTROL_PERT.lower(), ""}


@dataclass(frozen=True)
class GenerationExample:
    """One held-out prompt and its reference answer.

    Attributes
    ----------
    prompt
        Chat messages without the final assistant turn (SFT), or a text prefix (pretraining).
    reference
        The reference answer (the dataset's assistant turn, or the real cell sentence).
    task
        The example's task name.
    perturbation, cell_context
        Perturbation (``""`` if none) and cell context of the example.
    """

    prompt: tuple | str
    reference: str
    task: str
    perturbation: str = ""
    cell_context: str = ""

    @property
    def answers_with_cell(self) -> bool:
        return extract_cell(self.reference).found

    @property
    def is_chat(self) -> bool:
        return not isinstance(self.prompt, str)


@dataclass(frozen=True)
class FidelityReference:
    """Real pseudo-bulks of one perturbation in one cell context (vocabulary gene order)."""

    perturbed: np.ndarray
    control: np.ndarray
    decoded_control: np.ndarray


def sft_generation_examples(dataset, n: int, *, seed: int) -> list[GenerationExample]:
    """A seeded slice of ``n`` chat examples; the last assistant turn becomes the reference."""
    if n <= 0 or len(dataset) == 0:
        return []
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(dataset), size=min(n, len(dataset)), replace=False))
    out = []
    for row in dataset.select(rows.tolist()):
        messages = list(row["messages"])
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            continue
        prompt = tuple({"role": m["role"], "content": m["content"]} for m in messages[:last])
        out.append(
            GenerationExample(
                prompt=prompt,
                reference=messages[last]["content"],
                task=row.get("task", "") or "",
                perturbation=row.get("perturbation", "") or "",
                cell_context=row.get("cell_context", "") or "",
            )
        )
    return out


def pretrain_generation_examples(dataset, n: int, *, seed: int) -> list[GenerationExample]:
    """A seeded slice of pretraining texts: the text up to ``<cell>`` is the prompt.

    Texts without a ``<cell>`` marker are bare sentences: the prompt is empty (BOS only).
    """
    if n <= 0 or len(dataset) == 0:
        return []
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(dataset), size=min(n, len(dataset)), replace=False))
    out = []
    for text in dataset.select(rows.tolist())["text"]:
        cut = text.find(CELL_START)
        prefix = text[: cut + len(CELL_START)] if cut >= 0 else ""
        reference = text[cut:] if cut >= 0 else text
        out.append(GenerationExample(prompt=prefix, reference=reference, task="pretrain"))
    return out


def fidelity_references(rl_data) -> dict[tuple[str, str], FidelityReference]:
    """``(perturbation, cell_context)`` -> real pseudo-bulks, from the dataset's ``rl/`` splits."""
    if rl_data is None:
        return {}
    splits = rl_data.values() if hasattr(rl_data, "values") else [rl_data]
    needed = (
        "perturbation",
        "cell_context",
        "reference_perturbed",
        "reference_control",
        "decoded_control",
    )
    out: dict[tuple[str, str], FidelityReference] = {}
    for split in splits:
        if any(c not in split.column_names for c in needed):
            logger.warning("rl/ data lacks %s; perturbation fidelity is not evaluated.", needed)
            return {}
        for row in split.select_columns(list(needed)):
            key = (row["perturbation"], row["cell_context"])
            out.setdefault(
                key,
                FidelityReference(
                    np.asarray(row["reference_perturbed"], dtype=np.float64),
                    np.asarray(row["reference_control"], dtype=np.float64),
                    np.asarray(row["decoded_control"], dtype=np.float64),
                ),
            )
    return out


def normalize_answer(text: str) -> str:
    """Lower-case, collapse whitespace, strip surrounding punctuation: ``" T cell. "`` -> ``"t cell"``."""
    text = " ".join(str(text).split()).lower()
    return re.sub(r"^[\s\W_]+|[\s\W_]+$", "", text)


def text_answer_metrics(
    examples: Sequence[GenerationExample], answers: Sequence[str]
) -> dict[str, float]:
    """Exact-match accuracy (after :func:`normalize_answer`) per task of text-answer examples."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for example, answer in zip(examples, answers, strict=True):
        hits[example.task].append(normalize_answer(answer) == normalize_answer(example.reference))
    metrics = {f"gen_{task}_accuracy": float(np.mean(v)) for task, v in hits.items()}
    if hits:
        metrics["gen_text_accuracy"] = float(np.mean([h for v in hits.values() for h in v]))
    return metrics


def cell_answer_metrics(
    examples: Sequence[GenerationExample], answers: Sequence[str], decoder
) -> dict[str, float]:
    """Validity of generated cell sentences, decoded by ``decoder``, beside the references'."""
    if not examples:
        return {}
    _, report = decoder.decode(list(answers))
    _, ref_report = decoder.decode([e.reference for e in examples])
    distinct = len({extract_cell(a).sentence for a in answers}) / len(answers)
    return {
        "gen_valid_gene_fraction": report.valid_fraction,
        "gen_duplicate_fraction": report.duplicate_fraction,
        "gen_unknown_fraction": report.unknown_fraction,
        "gen_empty_fraction": report.empty_fraction,
        "gen_unclosed_fraction": report.unclosed_fraction,
        "gen_mean_length": report.mean_length,
        "gen_reference_mean_length": ref_report.mean_length,
        "gen_distinct_fraction": float(distinct),
    }


class GenerationEvaluator:
    """Answer held-out prompts by generation and score the answers.

    Parameters
    ----------
    examples
        The held-out slice (fixed for the whole run).
    tokenizer
        The training tokenizer (with its chat template).
    decoder
        The dataset's :class:`~cellrlhf.cell2text.decoder.ExpressionDecoder` (cell answers are
        skipped, with a warning, when ``None``).
    max_new_tokens, batch_size
        Generation budget per answer, prompts per ``generate`` call.
    temperature
        Sampling temperature for cell-sentence answers (0: greedy); text answers are greedy.
    seed
        Sampling seed; the training RNG streams are left untouched.
    references
        Real pseudo-bulks per ``(perturbation, cell_context)`` for fidelity (see
        :func:`fidelity_references`); empty turns fidelity off.
    fidelity_perturbations, fidelity_cells
        How many perturbation groups get a fidelity figure, and how many cells are sampled for
        each pseudo-bulk.
    constrain_cells
        Also generate cell answers under constrained decoding and report their validity as
        ``gen_constrained_*`` (same prompts, same seed). Needs a tokenizer with one token per
        gene; a ``genes_as_text`` tokenizer raises ``ValueError``. Fidelity stays unconstrained.

    Attributes
    ----------
    last_cell_answers
        The cell answers of the last call (keys ``"unconstrained"`` and, with
        ``constrain_cells``, ``"constrained"``), in the order of the cell-answer examples.
    """

    def __init__(
        self,
        examples: Sequence[GenerationExample],
        tokenizer,
        decoder=None,
        *,
        max_new_tokens: int = 256,
        batch_size: int = 16,
        temperature: float = 1.0,
        seed: int = 0,
        references: dict | None = None,
        fidelity_perturbations: int = 0,
        fidelity_cells: int = 64,
        constrain_cells: bool = False,
    ) -> None:
        self.examples = list(examples)
        self.tokenizer = tokenizer
        self.decoder = decoder
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = max(1, int(batch_size))
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.references = dict(references or {})
        self.fidelity_groups = self._fidelity_groups(int(fidelity_perturbations))
        self.fidelity_cells = int(fidelity_cells)
        if self.decoder is None and any(e.answers_with_cell for e in self.examples):
            logger.warning("no expression decoder: generated cell sentences are not scored.")
        self.last_cell_answers: dict[str, list[str]] = {}
        self.constraint = None
        if constrain_cells:
            if self.decoder is None:
                raise ValueError(
                    "constrain_cells=True needs the expression decoder (its genes are the ones a "
                    "cell may contain)."
                )
            from cellrlhf.cell2text.sentence_constraints import CellSentenceConstraint

            self.constraint = CellSentenceConstraint(self.tokenizer, self.decoder.vocab)

    # ------------------------------------------------------------------ public
    def __call__(self, model, accelerator=None) -> dict[str, float]:
        """Generate, gather over processes, and return the metrics (same dict on every process)."""
        text = [e for e in self.examples if not e.answers_with_cell]
        cells = (
            [e for e in self.examples if e.answers_with_cell] if self.decoder is not None else []
        )
        was_training = model.training
        model.eval()
        try:
            metrics: dict[str, float] = {}
            if text:
                answers = self._generate_distributed(model, accelerator, text, do_sample=False)
                metrics.update(text_answer_metrics(text, answers))
            if cells:
                answers = self._generate_distributed(
                    model, accelerator, cells, do_sample=self.temperature > 0
                )
                metrics.update(cell_answer_metrics(cells, answers, self.decoder))
                self.last_cell_answers = {"unconstrained": answers}
                if self.constraint is not None:
                    held = self._generate_distributed(
                        model,
                        accelerator,
                        cells,
                        do_sample=self.temperature > 0,
                        constrained=True,
                    )
                    self.last_cell_answers["constrained"] = held
                    constrained = cell_answer_metrics(cells, held, self.decoder)
                    metrics.update(
                        {
                            k.replace("gen_", "gen_constrained_", 1): v
                            for k, v in constrained.items()
                            if k != "gen_reference_mean_length"
                        }
                    )
            if self.fidelity_groups and self.decoder is not None:
                metrics.update(self._fidelity(model, accelerator))
        finally:
            model.train(was_training)
        return metrics

    # ------------------------------------------------------------------ fidelity
    def _fidelity_groups(self, limit: int) -> list[GenerationExample]:
        if limit <= 0 or not self.references:
            return []
        groups: dict[tuple[str, str], GenerationExample] = {}
        for e in self.examples:
            key = (e.perturbation, e.cell_context)
            if (
                e.answers_with_cell
                and e.perturbation.lower() not in _CONTROL_LABELS
                and key in self.references
            ):
                groups.setdefault(key, e)
        return list(groups.values())[:limit]

    def _fidelity(self, model, accelerator) -> dict[str, float]:
        from cellrlhf.metrics.fidelity import pearson_delta

        repeated = [e for e in self.fidelity_groups for _ in range(self.fidelity_cells)]
        answers = self._generate_distributed(model, accelerator, repeated, do_sample=True)
        scores = []
        for g, example in enumerate(self.fidelity_groups):
            chunk = answers[g * self.fidelity_cells : (g + 1) * self.fidelity_cells]
            X, _ = self.decoder.decode(chunk)
            pred = np.asarray(X.mean(axis=0)).ravel()
            ref = self.references[(example.perturbation, example.cell_context)]
            scores.append(pearson_delta(pred, ref.decoded_control, ref.perturbed, ref.control))
        finite = [s for s in scores if np.isfinite(s)]
        return {
            "gen_pearson_delta": float(np.mean(finite)) if finite else math.nan,
            "gen_fidelity_groups": float(len(scores)),
        }

    # ------------------------------------------------------------------ generation
    def _generate_distributed(
        self, model, accelerator, examples, *, do_sample: bool, constrained: bool = False
    ) -> list[str]:
        n = len(examples)
        if accelerator is None or accelerator.num_processes == 1:
            return self._generate(model, examples, do_sample=do_sample, constrained=constrained)
        from accelerate.utils import gather_object

        index = list(range(n))
        with accelerator.split_between_processes(index, apply_padding=True) as mine:
            local = self._generate(
                model,
                [examples[i] for i in mine],
                do_sample=do_sample,
                synced=_zero3_enabled(),
                rank=accelerator.process_index,
                constrained=constrained,
            )
            pairs = list(zip(mine, local, strict=True))
        gathered = gather_object(pairs)
        answers: dict[int, str] = {}
        for i, text in gathered:
            answers.setdefault(i, text)
        return [answers[i] for i in range(n)]

    def _generate(self, model, examples, *, do_sample, synced=False, rank=0, constrained=False):
        from cellrlhf.sampling import GenerationSettings, Sampler

        settings = GenerationSettings(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature if do_sample else 0.0,
            top_k=0,
            top_p=1.0,
            seed=self.seed + 1000 * rank,
            constrain_cells=constrained,
        )
        sampler = Sampler(model, self.tokenizer, constraint=self.constraint)
        prompts = [e.prompt if e.is_chat else str(e.prompt) for e in examples]
        done = sampler.generate(prompts, settings, batch_size=self.batch_size, synced_gpus=synced)
        return [_with_open_marker(e, c.text) for e, c in zip(examples, done, strict=True)]


def _with_open_marker(example: GenerationExample, answer: str) -> str:
    """A pretraining prompt ending in ``<cell>`` continues a sentence: give the answer its marker."""
    if not example.is_chat and str(example.prompt).endswith(CELL_START):
        return f"{CELL_START} {answer}"
    return answer


def _zero3_enabled() -> bool:
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover
        return False
    return bool(is_deepspeed_zero3_enabled())
