"""Scoring and pairing the sampled answers of one split, prompt by prompt.

Each prompt's sampled group is scored as a group
(:class:`~cellrlhf.reward.fidelity_reward.GroupFidelityReward`: a completion's score is its
leave-one-out credit); pairs whose scores differ by more than the margin become ``sampled``
pairs (:func:`select_sampled_pairs`), and hard negatives (:mod:`cellrlhf.reward.hard_negatives`)
are scored as one more member of the same group, so every answer shares one scale. Answers
written from a sentence take the model's own wording (:func:`answer_with_sentence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cellrlhf.cell2text.markup import CELL_END, CELL_START, format_cell
from cellrlhf.reward.hard_negatives import (
    HARD_NEGATIVE_KINDS,
    PromptReference,
    build_hard_negatives,
)
from cellrlhf.reward.preference_config import PreferenceConfig

if TYPE_CHECKING:
    from cellrlhf.reward.preferences import SampledGroup

__all__ = [
    "PAIR_KINDS",
    "RL_COLUMNS",
    "answer_with_sentence",
    "score_and_pair",
    "select_sampled_pairs",
]

PAIR_KINDS = ("sampled", *HARD_NEGATIVE_KINDS)
# the rl/ prompt-set columns a preference build reads
RL_COLUMNS = (
    "prompt",
    "perturbation",
    "cell_context",
    "reference_perturbed",
    "reference_control",
    "decoded_control",
    "reference_sentences",
)


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
        cell_context=column("cell_context"),
    )


def score_and_pair(
    config: PreferenceConfig,
    reward,
    rows,
    groups: list[SampledGroup],
    split: str,
    stream: int,
) -> tuple[list[dict], list[dict]]:
    """Pairs and scored completions of one split."""
    from tqdm.auto import tqdm

    wanted = (*RL_COLUMNS, "split_kind", "de_genes_up", "de_genes_down")
    rows = {name: list(rows[name]) for name in wanted if name in rows.column_names}
    refs = _references(rows)
    split_kind = rows.get("split_kind") or [""] * len(rows["prompt"])
    pairs: list[dict] = []
    completions: list[dict] = []
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
                    "specific": float(breakdown.specific[i]),
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
                    prompt,
                    texts[i],
                    texts[j],
                    scores[i],
                    scores[j],
                    "sampled",
                    ("sampled", common["cell_context"]),
                    common,
                )
            )

        pairs += _hard_negative_pairs(config, reward, rows, refs, r, texts, scores, rng, common)
    return pairs, completions


def _hard_negative_pairs(
    config: PreferenceConfig, reward, rows, refs, r: int, texts, scores, rng, common: dict
) -> list[dict]:
    """Hard-negative pairs of prompt ``r``, each answer scored as one more member of the
    prompt's sampled group ``texts`` (scores ``scores``)."""
    negatives = build_hard_negatives(
        refs[r],
        refs,
        genes=list(reward.decoder.vocab.genes),
        rng=rng,
        kinds=config.hard_negative_kinds,
        per_kind=config.hard_negatives_per_kind,
        min_de_genes=config.min_de_genes,
        max_other_delta_pearson=config.max_other_delta_pearson,
    )
    if not negatives:
        return []
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
    candidates = [a for pair in answers for a in pair]
    scored = _score_groups(reward, [[*texts, c] for c in candidates], rows, [r] * len(candidates))
    cand_scores = scored.reward[np.cumsum([len(texts) + 1] * len(candidates)) - 1]
    prompt = rows["prompt"][r]
    return [
        _pair(
            prompt,
            chosen,
            rejected,
            cand_scores[2 * k],
            cand_scores[2 * k + 1],
            neg.kind,
            (neg.source, neg.source_context),
            common,
        )
        for k, (neg, (chosen, rejected)) in enumerate(zip(negatives, answers, strict=True))
    ]


def _pair(
    prompt,
    chosen: str,
    rejected: str,
    s_chosen,
    s_rejected,
    kind: str,
    source: tuple[str, str],
    common: dict,
) -> dict:
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "score_chosen": float(s_chosen),
        "score_rejected": float(s_rejected),
        "pair_kind": kind,
        "rejected_source": source[0],
        "rejected_source_context": source[1],
        **common,
    }
