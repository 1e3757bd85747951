"""Preference pairs for a learned reward model, from an SFT model's own samples.

For every RL prompt (the data stage's ``rl/`` split: one prompt per perturbation and cell
context, with the real reference profiles), ``N`` completions are sampled from the SFT model and
scored *as a group* with :class:`~cellrlhf.reward.fidelity_reward.GroupFidelityReward`: each
completion's score is its leave-one-out (jackknife) contribution to the fidelity of the group's
pseudo-bulk, minus its contribution to the distance between the group and real cells (realism),
minus the duplicate / unclosed / unknown-word penalties. A per-cell score would teach the reward
model to prefer one average signature, the collapse the pilot study saw with per-cell rewards.

Pairs ``(i, j)`` of completions of the same prompt whose scores differ by more than
``min_score_margin`` become ``sampled`` pairs; hard negatives
(:mod:`cellrlhf.reward.hard_negatives`) add answers known to be wrong, each paired with a real
cell of the perturbation (or the prompt's best sample) as the chosen answer. Every answer is
scored in the context of the prompt's sampled group, so all scores share one scale.

Output (``output_dir``)::

    pairs/         DatasetDict train/test, TRL preference format (conversational, explicit
                   prompt): prompt, chosen, rejected, plus score_chosen, score_rejected,
                   pair_kind, perturbation, cell_context, split_kind, prompt_id, rejected_source
    completions/   DatasetDict train/test: every sampled completion with its score and terms
                   (the reward model's rank-correlation evaluation uses test)
    manifest.json  configuration, inputs, counts, held-out perturbations, leakage check
    preferences.png  score distributions and pair counts

Training pairs come only from the ``train`` split and test pairs only from ``test`` (hard
negatives draw other perturbations from their own split); the held-out perturbations of the
dataset's ``splits.json`` are checked to be absent from every training pair.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellrlhf.cell2text.markup import CELL_END, CELL_START, format_cell
from cellrlhf.data.split_config import LeakageError
from cellrlhf.reward.hard_negatives import (
    HARD_NEGATIVE_KINDS,
    PromptReference,
    build_hard_negatives,
)

__all__ = [
    "PAIR_KINDS",
    "PAIRS_DIRNAME",
    "COMPLETIONS_DIRNAME",
    "MANIFEST_FILENAME",
    "PreferenceConfig",
    "SampledGroup",
    "LeakageError",
    "sample_completions",
    "select_sampled_pairs",
    "answer_with_sentence",
    "held_out_keys",
    "check_no_leakage",
    "build_preferences",
    "load_preference_pairs",
    "load_preferences",
]

logger = logging.getLogger(__name__)

PAIR_KINDS = ("sampled", *HARD_NEGATIVE_KINDS)
PAIRS_DIRNAME = "pairs"
COMPLETIONS_DIRNAME = "completions"
MANIFEST_FILENAME = "manifest.json"
PLOT_FILENAME = "preferences.png"
_FORMAT = "cellrlhf.preferences"
_VERSION = 1
_RL_COLUMNS = (
    "prompt",
    "perturbation",
    "cell_context",
    "reference_perturbed",
    "reference_control",
    "decoded_control",
    "reference_sentences",
)
_CHOSEN_MODES = ("real", "best_sample")


@dataclass
class PreferenceConfig:
    """Arguments of ``cellrlhf preferences`` (``--config`` YAML, flags override it)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "SFT model directory to sample completions from (written by `cellrlhf sft`). Required."
        },
    )
    dataset_dir: str | None = field(
        default=None,
        metadata={
            "help": "Dataset directory written by `cellrlhf data build` (with rl/ and splits.json). Required."
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where pairs/, completions/ and manifest.json are written. Required."},
    )
    train_split: str = field(
        default="train", metadata={"help": "rl/ split that yields the training pairs."}
    )
    test_split: str = field(
        default="test",
        metadata={
            "help": "rl/ split of held-out perturbations that yields the evaluation pairs ('' to skip)."
        },
    )
    num_completions: int = field(
        default=64,
        metadata={
            "help": "Completions sampled per prompt: the group whose pseudo-bulk is scored (the pilot needed "
            ">= 64 cells for a stable pseudo-bulk)."
        },
    )
    generation_batch_size: int = field(
        default=256, metadata={"help": "Sequences generated together (per process)."}
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Token budget of each completion."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (> 0)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0: off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (1: off)."})
    seed: int = field(
        default=0, metadata={"help": "Seed of sampling, pair selection and hard negatives."}
    )
    max_prompts: int | None = field(
        default=None,
        metadata={"help": "Use at most this many prompts per split (seeded subsample)."},
    )
    min_score_margin: float = field(
        default=0.1,
        metadata={"help": "Sampled pairs need score(chosen) - score(rejected) above this margin."},
    )
    max_pairs_per_prompt: int = field(
        default=32,
        metadata={
            "help": "Sampled pairs kept per prompt (drawn at random among qualifying pairs)."
        },
    )
    hard_negative_kinds: list[str] = field(
        default_factory=lambda: list(HARD_NEGATIVE_KINDS),
        metadata={
            "help": f"Hard negatives to add, any of {list(HARD_NEGATIVE_KINDS)} (empty list: none)."
        },
    )
    hard_negatives_per_kind: int = field(
        default=2, metadata={"help": "Hard negatives of each kind per prompt."}
    )
    hard_negative_chosen: str = field(
        default="real",
        metadata={
            "help": "Chosen answer of hard-negative pairs: `real` (a real cell of the perturbation) or "
            "`best_sample` (the prompt's best-scoring sample).",
            "choices": list(_CHOSEN_MODES),
        },
    )
    min_de_genes: int = field(
        default=1,
        metadata={
            "help": "A perturbation with at least this many DE genes acts: it gets `control` negatives."
        },
    )
    max_other_delta_pearson: float = field(
        default=0.5,
        metadata={
            "help": "`other_perturbation` negatives come from perturbations whose response correlates with "
            "the prompt's below this value."
        },
    )
    reward_weights: dict | str | None = field(
        default=None,
        metadata={
            "help": "Weights of the group reward's terms (RewardWeights: fidelity, top_de, distribution, "
            "duplicates, unclosed, unknown, empty), as a mapping in YAML or a JSON string. Default: the "
            "reward's defaults."
        },
    )
    reward_credit: str = field(
        default="jackknife",
        metadata={
            "help": "Credit of each completion: `jackknife` (leave-one-out) or `group`.",
            "choices": ["jackknife", "group"],
        },
    )
    reward_distance: str = field(
        default="energy",
        metadata={
            "help": "Realism distance to real cells: `energy` or `mmd`.",
            "choices": ["energy", "mmd"],
        },
    )
    reward_top_k: int = field(default=20, metadata={"help": "Genes of the reward's top-DE term."})
    reward_pseudo_clip: float = field(
        default=3.0, metadata={"help": "Bound on leave-one-out pseudo-values."}
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Dtype of the model for sampling.",
            "choices": ["float32", "bfloat16", "float16"],
        },
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self) -> None:
        if isinstance(self.reward_weights, str):
            self.reward_weights = (
                json.loads(self.reward_weights) if self.reward_weights.strip() else None
            )
        if self.num_completions < 2:
            raise ValueError(
                f"num_completions={self.num_completions}; a group needs at least 2 completions."
            )
        if self.generation_batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("generation_batch_size and max_new_tokens must be >= 1.")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature}; sampling needs a temperature > 0.")
        if (
            self.min_score_margin < 0
            or self.max_pairs_per_prompt < 0
            or self.hard_negatives_per_kind < 0
        ):
            raise ValueError(
                "min_score_margin, max_pairs_per_prompt and hard_negatives_per_kind must be >= 0."
            )
        unknown = set(self.hard_negative_kinds) - set(HARD_NEGATIVE_KINDS)
        if unknown:
            raise ValueError(
                f"hard_negative_kinds has unknown kinds {sorted(unknown)}; choose from {HARD_NEGATIVE_KINDS}."
            )
        if self.hard_negative_chosen not in _CHOSEN_MODES:
            raise ValueError(
                f"hard_negative_chosen={self.hard_negative_chosen!r}; choose one of {_CHOSEN_MODES}."
            )

    def reward(self, decoder):
        """The :class:`GroupFidelityReward` these settings describe."""
        from cellrlhf.reward.fidelity_reward import GroupFidelityReward

        return GroupFidelityReward(
            decoder,
            weights=self.reward_weights,
            credit=self.reward_credit,
            top_k=self.reward_top_k,
            distance=self.reward_distance,
            pseudo_clip=self.reward_pseudo_clip,
            gather=False,
        )


# --------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class SampledGroup:
    """The completions sampled for one prompt.

    Attributes
    ----------
    texts
        Completion texts (special tokens kept, so ``<cell>`` markup survives; cut before the
        end token).
    ended
        Whether each completion produced an end token before the length cap.
    """

    texts: list[str]
    ended: list[bool]


def _chunk_seed(seed: int, stream: int, chunk: int) -> int:
    return int(np.random.SeedSequence([seed, stream, chunk]).generate_state(1)[0])


def sample_completions(
    model,
    tokenizer,
    prompts: Sequence[list[dict[str, str]]],
    *,
    num_completions: int,
    max_new_tokens: int,
    batch_size: int = 256,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    stream: int = 0,
    progress: bool = True,
) -> list[SampledGroup]:
    """Sample ``num_completions`` answers to each conversational prompt, in batches.

    The ``len(prompts) * num_completions`` sequences are generated by the project's sampler
    (:class:`cellrlhf.sampling.Sampler`: chat template, left padding, stop trimming, forked
    RNG) in chunks of ``batch_size``. Chunk ``c`` is seeded from ``(seed, stream, c)``, so the
    result depends only on the inputs and these arguments, not on how many processes share the
    work: with several processes (accelerate), chunks are split between them and the texts
    gathered on every process.

    Returns
    -------
    One :class:`SampledGroup` per prompt, in prompt order.
    """
    from dataclasses import replace

    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from cellrlhf.sampling import GenerationSettings, Sampler

    sampler = Sampler(model, tokenizer)
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p
    )
    encoded = [sampler.prompt_ids(list(p)) for p in prompts]
    jobs = [(p, k) for p in range(len(encoded)) for k in range(num_completions)]
    chunks = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    state = PartialState()
    local: list[tuple[int, list[tuple[str, bool]]]] = []
    with state.split_between_processes(list(range(len(chunks)))) as mine:
        for c in tqdm(
            mine, desc="sampling", unit="batch", disable=not progress or not state.is_main_process
        ):
            done = sampler.generate_ids(
                [encoded[p] for p, _ in chunks[c]],
                replace(settings, seed=_chunk_seed(seed, stream, c) % (2**32)),
                batch_size=len(chunks[c]),
            )
            local.append((c, [(d.text, d.finished) for d in done]))
    by_chunk = dict(gather_object(local) if state.num_processes > 1 else local)
    texts: list[list[str]] = [[] for _ in encoded]
    ended: list[list[bool]] = [[] for _ in encoded]
    for c, chunk in enumerate(chunks):
        for (p, _), (text, finished) in zip(chunk, by_chunk[c], strict=True):
            texts[p].append(text)
            ended[p].append(finished)
    return [SampledGroup(t, e) for t, e in zip(texts, ended, strict=True)]


# --------------------------------------------------------------------------- pairs
def select_sampled_pairs(
    scores: np.ndarray,
    sentences: Sequence[str],
    *,
    min_margin: float,
    max_pairs: int,
    rng: np.random.Generator,
) -> list[tuple[int, int]]:
    """Pairs ``(chosen, rejected)`` of one group whose scores differ by more than ``min_margin``.

    Pairs of identical answers (same sentence after whitespace normalisation) are skipped; at
    most ``max_pairs`` are drawn uniformly at random among those that qualify, then listed in
    a fixed order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    keys = [" ".join(s.split()).upper() for s in sentences]
    diff = scores[:, None] - scores[None, :]
    chosen, rejected = np.nonzero(diff > min_margin)
    keep = np.fromiter(
        (keys[i] != keys[j] for i, j in zip(chosen, rejected, strict=True)),
        dtype=bool,
        count=len(chosen),
    )
    chosen, rejected = chosen[keep], rejected[keep]
    if len(chosen) > max_pairs:
        picked = np.sort(rng.choice(len(chosen), size=max_pairs, replace=False))
        chosen, rejected = chosen[picked], rejected[picked]
    return [(int(i), int(j)) for i, j in zip(chosen, rejected, strict=True)]


def answer_with_sentence(template: str | None, sentence: str) -> str:
    """An answer carrying ``sentence``, written the way the model writes its answers.

    The cell inside ``template`` (a sampled answer, ``... <cell> G1 G2 </cell> ...``) is replaced
    by ``sentence``, so hard negatives and real cells differ from sampled answers in their genes
    only, never in their wording; without a usable template the answer is ``format_cell(sentence)``.
    """
    cell = format_cell(sentence)
    if not template:
        return cell
    start = template.find(CELL_START)
    end = template.find(CELL_END, start + len(CELL_START)) if start >= 0 else -1
    if start < 0 or end < 0:
        return cell
    return template[:start] + cell + template[end + len(CELL_END) :]


def _template_of(texts: Sequence[str], scores: np.ndarray) -> str | None:
    """The best-scoring sampled answer that has a closed cell, as the wording template."""
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        text = texts[i]
        start = text.find(CELL_START)
        if start >= 0 and text.find(CELL_END, start) >= 0:
            return text
    return None


# --------------------------------------------------------------------------- leakage
def held_out_keys(dataset_dir: str | Path, train_rows, test_rows) -> set[tuple[str, str]]:
    """``(perturbation, cell_context)`` pairs that are held out, from the dataset's ``splits.json``.

    ``unseen_single``: every pair whose perturbation names a held-out target; ``unseen_combo``:
    the held-out combinations; ``unseen_context``: every pair in a held-out context. Without a
    split manifest (or for ``random_cells``), the test pairs that never occur in train.
    """
    test_keys = {
        (str(p), str(c))
        for p, c in zip(test_rows["perturbation"], test_rows["cell_context"], strict=True)
    }
    train_keys = {
        (str(p), str(c))
        for p, c in zip(train_rows["perturbation"], train_rows["cell_context"], strict=True)
    }
    all_keys = test_keys | train_keys
    path = Path(dataset_dir) / "splits.json"
    held = test_keys - train_keys
    if not path.exists():
        return held
    splits = json.loads(path.read_text())
    kind = splits.get("kind")
    if kind == "unseen_single":
        targets = {t.upper() for t in splits.get("test_targets", [])}
        held |= {k for k in all_keys if any(t.upper() in targets for t in k[0].split("+") if t)}
    elif kind == "unseen_combo":
        perts = set(splits.get("test_perturbations", []))
        held |= {k for k in all_keys if k[0] in perts}
    elif kind == "unseen_context":
        contexts = set(splits.get("test_contexts", []))
        held |= {k for k in all_keys if k[1] in contexts}
    return held


def check_no_leakage(pairs, held_out: set[tuple[str, str]]) -> None:
    """Raise :class:`LeakageError` when a pair (or the source of its rejected answer) is held out."""
    bad = sorted(
        {
            (p, c)
            for p, c in zip(pairs["perturbation"], pairs["cell_context"], strict=True)
            if (p, c) in held_out
        }
    )
    held_perts = {p for p, _ in held_out}
    sources = sorted(
        {
            s
            for s, kind in zip(pairs["rejected_source"], pairs["pair_kind"], strict=True)
            if kind == "other_perturbation" and s in held_perts
        }
    )
    if bad or sources:
        raise LeakageError(
            f"held-out perturbations in training pairs: {bad[:5]} (prompts), {sources[:5]} (hard-negative "
            "sources). Build training pairs from the rl train split only."
        )


# --------------------------------------------------------------------------- building
def _references(rows: dict[str, list]) -> list[PromptReference]:
    n = len(rows["prompt"])
    up = rows.get("de_genes_up") or [[]] * n
    down = rows.get("de_genes_down") or [[]] * n
    return [
        PromptReference(
            perturbation=str(p),
            cell_context=str(c),
            reference_perturbed=np.asarray(rp, dtype=np.float64),
            reference_control=np.asarray(rc, dtype=np.float64),
            reference_sentences=tuple(s),
            n_de_genes=len(u or []) + len(d or []),
        )
        for p, c, rp, rc, s, u, d in zip(
            rows["perturbation"],
            rows["cell_context"],
            rows["reference_perturbed"],
            rows["reference_control"],
            rows["reference_sentences"],
            up,
            down,
            strict=True,
        )
    ]


def _score_groups(reward, groups: list[list[str]], rows: dict[str, list], row_of_group: list[int]):
    """Score several groups of answers in one call; one breakdown for all rows."""
    texts = [t for g in groups for t in g]
    keys = [k for k, g in enumerate(groups) for _ in g]
    index = [row_of_group[k] for k in keys]

    def column(name: str) -> list:
        values = rows[name]
        return [values[i] for i in index]

    return reward.score(
        keys,
        texts,
        reference_perturbed=column("reference_perturbed"),
        reference_control=column("reference_control"),
        decoded_control=column("decoded_control"),
        reference_sentences=column("reference_sentences"),
    )


def _split_records(
    config: PreferenceConfig,
    reward,
    rows,
    groups: list[SampledGroup],
    split: str,
    stream: int,
) -> tuple[list[dict], list[dict]]:
    """Pairs and scored completions of one split."""
    from tqdm.auto import tqdm

    wanted = (*_RL_COLUMNS, "split_kind", "de_genes_up", "de_genes_down")
    rows = {name: list(rows[name]) for name in wanted if name in rows.column_names}
    refs = _references(rows)
    genes = list(reward.decoder.vocab.genes)
    split_kind = rows.get("split_kind") or [""] * len(rows["prompt"])
    pairs: list[dict] = []
    completions: list[dict] = []
    n_samples = len(groups[0].texts) if groups else 0
    for r in tqdm(range(len(rows["prompt"])), desc=f"scoring {split}", disable=not config.progress):
        prompt = rows["prompt"][r]
        group = groups[r]
        prompt_id = f"{split}:{r}"
        common = {
            "perturbation": refs[r].perturbation,
            "cell_context": refs[r].cell_context,
            "split_kind": str(split_kind[r]),
            "prompt_id": prompt_id,
        }
        # the sampled group itself: completion i's score is its leave-one-out credit
        texts = list(group.texts)
        breakdown = _score_groups(reward, [texts], rows, [r])
        scores = breakdown.reward
        for i, text in enumerate(texts):
            completions.append(
                {
                    "prompt": prompt,
                    "completion": [{"role": "assistant", "content": text}],
                    "score": float(scores[i]),
                    "fidelity": float(breakdown.fidelity[i]),
                    "distribution": float(breakdown.distribution[i]),
                    "duplicate_fraction": float(breakdown.duplicate_fraction[i]),
                    "unclosed": float(breakdown.unclosed[i]),
                    "ended": bool(group.ended[i]),
                    "group_fidelity": float(breakdown.group_fidelity[i]),
                    **common,
                }
            )
        rng = np.random.default_rng([config.seed, stream, r])
        for i, j in select_sampled_pairs(
            scores,
            texts,
            min_margin=config.min_score_margin,
            max_pairs=config.max_pairs_per_prompt,
            rng=rng,
        ):
            pairs.append(
                _pair(
                    prompt, texts[i], texts[j], scores[i], scores[j], "sampled", "sampled", common
                )
            )

        negatives = build_hard_negatives(
            refs[r],
            refs,
            genes=genes,
            rng=rng,
            kinds=config.hard_negative_kinds,
            per_kind=config.hard_negatives_per_kind,
            min_de_genes=config.min_de_genes,
            max_other_delta_pearson=config.max_other_delta_pearson,
        )
        if not negatives:
            continue
        template = _template_of(texts, scores)
        best = int(np.argmax(scores))
        answers: list[tuple[str, str]] = []  # (chosen, rejected) texts
        for neg in negatives:
            chosen = (
                texts[best]
                if config.hard_negative_chosen == "best_sample"
                else answer_with_sentence(template, neg.chosen)
            )
            answers.append((chosen, answer_with_sentence(template, neg.rejected)))
        # every answer scored as one more member of the prompt's sampled group
        candidates = [a for pair in answers for a in pair]
        scored = _score_groups(
            reward, [[*texts, c] for c in candidates], rows, [r] * len(candidates)
        )
        last = np.cumsum([n_samples + 1] * len(candidates)) - 1
        cand_scores = scored.reward[last]
        for k, (neg, (chosen, rejected)) in enumerate(zip(negatives, answers, strict=True)):
            pairs.append(
                _pair(
                    prompt,
                    chosen,
                    rejected,
                    cand_scores[2 * k],
                    cand_scores[2 * k + 1],
                    neg.kind,
                    neg.source,
                    common,
                )
            )
    return pairs, completions


def _pair(
    prompt, chosen: str, rejected: str, s_chosen, s_rejected, kind: str, source: str, common: dict
) -> dict:
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "score_chosen": float(s_chosen),
        "score_rejected": float(s_rejected),
        "pair_kind": kind,
        "rejected_source": source,
        **common,
    }


def _subsample(rows, limit: int | None, seed: int, stream: int):
    if limit is None or len(rows) <= limit:
        return rows
    rng = np.random.default_rng([seed, stream, 1_000_003])
    return rows.select(np.sort(rng.choice(len(rows), size=limit, replace=False)).tolist())


def _load_rl(dataset_dir: Path):
    from datasets import DatasetDict, load_from_disk

    where = dataset_dir / "rl"
    if not where.exists():
        raise FileNotFoundError(
            f"{dataset_dir} has no rl/ prompt set; build it with `cellrlhf data build` (rl enabled)."
        )
    rl = load_from_disk(str(where))
    if not isinstance(rl, DatasetDict):
        raise ValueError(f"{where} holds a single Dataset; expected train/test splits.")
    for name, split in rl.items():
        missing = [c for c in _RL_COLUMNS if c not in split.column_names]
        if missing:
            raise ValueError(
                f"{where} split {name!r} lacks column(s) {missing}; rebuild it with `cellrlhf data build`."
            )
    return rl


def _load_sft_model(path: str | None, dtype: str):
    import torch
    from accelerate import PartialState

    from cellrlhf.sft.model_dir import load_cell_model

    if not path:
        raise ValueError("no model given: pass --model_name_or_path <SFT model directory>.")
    model, tokenizer, info = load_cell_model(path, dtype=getattr(torch, dtype))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # the device comes from accelerate's state (accelerate config / launcher), not from code
    model.to(PartialState().device)
    return model, tokenizer, info


def build_preferences(config: PreferenceConfig) -> dict[str, Any]:
    """Sample, score and pair; write the preference directory. Returns the manifest.

    Every process samples its share of the completions; scoring, pairing and writing happen
    on the main process (other processes return the manifest without writing).
    """
    from accelerate import PartialState
    from datasets import Dataset, DatasetDict

    from cellrlhf.cell2text.decoder import ExpressionDecoder

    if not config.dataset_dir or not config.output_dir:
        raise ValueError(
            "pass --dataset_dir <cellrlhf data build output> and --output_dir <where to write>."
        )
    started = time.perf_counter()
    dataset_dir = Path(config.dataset_dir)
    rl = _load_rl(dataset_dir)
    splits = [s for s in (config.train_split, config.test_split) if s]
    for split in splits:
        if split not in rl:
            raise ValueError(f"{dataset_dir}/rl has no split {split!r} (splits: {list(rl)}).")
    held = (
        held_out_keys(dataset_dir, rl[config.train_split], rl[config.test_split])
        if config.test_split
        else held_out_keys(
            dataset_dir, rl[config.train_split], {"perturbation": [], "cell_context": []}
        )
    )
    leaked = sorted(
        {
            (str(p), str(c))
            for p, c in zip(
                rl[config.train_split]["perturbation"],
                rl[config.train_split]["cell_context"],
                strict=True,
            )
        }
        & held
    )
    if leaked:
        raise LeakageError(
            f"the rl {config.train_split!r} split holds prompts of held-out perturbations {leaked[:5]} "
            f"(splits.json of {dataset_dir}); rebuild the dataset with `cellrlhf data build`."
        )
    decoder = ExpressionDecoder.load(dataset_dir)
    reward = config.reward(decoder)
    model, tokenizer, _ = _load_sft_model(config.model_name_or_path, config.dtype)
    state = PartialState()

    pair_splits: dict[str, list[dict]] = {}
    completion_splits: dict[str, list[dict]] = {}
    for stream, split in enumerate(splits):
        rows = _subsample(rl[split], config.max_prompts, config.seed, stream)
        logger.info("%s: sampling %d x %d completions", split, len(rows), config.num_completions)
        groups = sample_completions(
            model,
            tokenizer,
            list(rows["prompt"]),
            num_completions=config.num_completions,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.generation_batch_size,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            seed=config.seed,
            stream=stream,
            progress=config.progress,
        )
        if state.is_main_process:
            pair_splits[split], completion_splits[split] = _split_records(
                config, reward, rows, groups, split, stream
            )

    manifest = _manifest(
        config, dataset_dir, pair_splits, completion_splits, held, time.perf_counter() - started
    )
    if state.is_main_process:
        pairs = DatasetDict(
            {s: Dataset.from_list(v) if v else _empty_pairs() for s, v in pair_splits.items()}
        )
        check_no_leakage(pairs[config.train_split], held)
        completions = DatasetDict(
            {s: Dataset.from_list(v) for s, v in completion_splits.items() if v}
        )
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        pairs.save_to_disk(str(out / PAIRS_DIRNAME))
        completions.save_to_disk(str(out / COMPLETIONS_DIRNAME))
        _plot(completion_splits, pair_splits, out / PLOT_FILENAME)
        (out / MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=1))
        logger.info("preference data written to %s: %s", out, manifest["counts"])
    state.wait_for_everyone()
    return manifest


def _empty_pairs():
    from datasets import Dataset, Features, Value

    message = [{"role": Value("string"), "content": Value("string")}]
    features = Features(
        {
            "prompt": message,
            "chosen": message,
            "rejected": message,
            "score_chosen": Value("float64"),
            "score_rejected": Value("float64"),
            "pair_kind": Value("string"),
            "rejected_source": Value("string"),
            "perturbation": Value("string"),
            "cell_context": Value("string"),
            "split_kind": Value("string"),
            "prompt_id": Value("string"),
        }
    )
    return Dataset.from_dict({k: [] for k in features}, features=features)


def _manifest(
    config, dataset_dir: Path, pairs: dict, completions: dict, held: set, seconds: float
) -> dict:
    data_manifest_path = dataset_dir / "manifest.json"
    data_manifest = (
        json.loads(data_manifest_path.read_text()) if data_manifest_path.exists() else {}
    )
    counts = {
        split: {kind: sum(1 for p in rows if p["pair_kind"] == kind) for kind in PAIR_KINDS}
        for split, rows in pairs.items()
    }
    scores = {
        split: {
            "n_completions": len(rows),
            "score_mean": float(np.mean([c["score"] for c in rows])) if rows else None,
            "score_std": float(np.std([c["score"] for c in rows])) if rows else None,
            "ended_fraction": float(np.mean([c["ended"] for c in rows])) if rows else None,
            "group_fidelity_mean": float(np.mean([c["group_fidelity"] for c in rows]))
            if rows
            else None,
        }
        for split, rows in completions.items()
    }
    return {
        "format": _FORMAT,
        "version": _VERSION,
        "config": asdict(config),
        "model": str(config.model_name_or_path),
        "dataset_dir": str(dataset_dir),
        "dataset_fingerprint": data_manifest.get("fingerprint"),
        "simulated": bool(data_manifest.get("simulated", False)),
        "counts": counts,
        "completions": scores,
        "perturbations": {
            split: sorted({p["perturbation"] for p in rows}) for split, rows in pairs.items()
        },
        "held_out": sorted(f"{p} | {c}" for p, c in held),
        "leakage_check": "passed: no held-out perturbation in the training pairs",
        "seconds": round(seconds, 1),
    }


def _plot(completions: dict[str, list[dict]], pairs: dict[str, list[dict]], path: Path) -> None:
    from cellrlhf.figures import subplots

    fig, axes = subplots(1, 2, figsize=(10, 3.8))
    for split, rows in completions.items():
        if rows:
            axes[0].hist([c["score"] for c in rows], bins=40, alpha=0.6, label=split)
    axes[0].set_xlabel("group-aware score of sampled completions")
    axes[0].set_ylabel("completions")
    axes[0].legend()
    width = 0.8 / max(len(pairs), 1)
    for k, (split, rows) in enumerate(pairs.items()):
        heights = [sum(1 for p in rows if p["pair_kind"] == kind) for kind in PAIR_KINDS]
        axes[1].bar(np.arange(len(PAIR_KINDS)) + k * width, heights, width=width, label=split)
    axes[1].set_xticks(np.arange(len(PAIR_KINDS)) + 0.4 - width / 2, PAIR_KINDS, rotation=15)
    axes[1].set_ylabel("pairs")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- loading
def _check_preferences_dir(path: str | Path) -> Path:
    root = Path(path)
    if not (root / MANIFEST_FILENAME).exists() or not (root / PAIRS_DIRNAME).exists():
        raise FileNotFoundError(
            f"{root} is not a preference directory (no {MANIFEST_FILENAME} / {PAIRS_DIRNAME}/); build one with "
            "`cellrlhf preferences --config ...`."
        )
    return root


def load_preference_pairs(path: str | Path):
    """The ``pairs`` DatasetDict of a preference directory (TRL preference format)."""
    from datasets import load_from_disk

    return load_from_disk(str(_check_preferences_dir(path) / PAIRS_DIRNAME))


def load_preferences(path: str | Path, split: str):
    """``(pairs, completions)`` of one split; ``completions`` is ``None`` when absent."""
    from datasets import load_from_disk

    root = _check_preferences_dir(path)
    pairs = load_from_disk(str(root / PAIRS_DIRNAME))
    if split not in pairs:
        raise ValueError(f"{root} has no {split!r} split of pairs (splits: {list(pairs)}).")
    completions = None
    if (root / COMPLETIONS_DIRNAME).exists():
        all_completions = load_from_disk(str(root / COMPLETIONS_DIRNAME))
        completions = all_completions.get(split)
    return pairs[split], completions
