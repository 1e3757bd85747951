"""Sampling answers to held-out prompts, and their log-probabilities under any model.

Used by the held-out monitor: answers are sampled from the policy with the training
temperature (plain ancestral sampling, ``top_k=0``, ``top_p=1``, as TRL's trainers sample),
cut after the first end token, and scored under the policy and the frozen reference for a
Monte-Carlo estimate of ``KL(policy || reference)`` (``mean log pi - log pi_ref`` over the
sampled answers, on temperature-scaled logits as TRL computes its KL term).

With a ``constraint`` (a constrained policy, :mod:`cellrlhf.ppo.constrained_policy`) answers
are sampled under the cell grammar and scored with the same masked logits.

Sampling is the project's one sampler (:class:`cellrlhf.sampling.Sampler`: forked RNG, so the
training random streams are untouched); the caller places the models (accelerate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SampledAnswers", "sample_answers", "answer_logprobs"]


@dataclass(frozen=True)
class SampledAnswers:
    """Answers sampled for a list of prompt indices (one answer per entry of ``items``).

    Attributes
    ----------
    items
        ``(N,)`` index of the prompt each answer belongs to.
    completion_ids
        Generated token ids, cut after the first end token (which is kept).
    texts
        The answers as text: markup tokens kept, end and padding tokens removed.
    finished
        ``(N,)`` whether the answer produced an end token before the length cap.
    """

    items: np.ndarray
    completion_ids: list[list[int]]
    texts: list[str]
    finished: np.ndarray


def sample_answers(
    model,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    items: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float,
    stop_ids: Sequence[int],
    batch_size: int,
    seed: int,
    progress: bool = False,
    constraint=None,
) -> SampledAnswers:
    """Sample one answer for every entry of ``items`` (an index into ``prompt_ids``).

    Parameters
    ----------
    model
        A causal LM (unwrapped; parameters gathered under ZeRO-3).
    tokenizer
        Its tokenizer (pad token set).
    prompt_ids
        Token ids of each prompt (chat template applied, generation prompt included).
    items
        Prompt index of each answer to sample, e.g. ``[0] * 64 + [1] * 64``.
    max_new_tokens, temperature, stop_ids
        Generation budget, sampling temperature (> 0) and end tokens (the training's).
    batch_size
        Answers per ``generate`` call.
    seed
        Seed of the forked RNG (the same seed gives the same answers for the same model).
    progress
        Show a progress bar.
    constraint
        A :class:`~cellrlhf.cell2text.sentence_constraints.CellSentenceConstraint` to sample
        under (``None``: unconstrained).
    """
    from cellrlhf.sampling import GenerationSettings, Sampler

    if temperature <= 0:
        raise ValueError(f"temperature={temperature}; sampling needs a temperature > 0.")
    settings = GenerationSettings(
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_k=0,
        top_p=1.0,
        seed=int(seed),
        constrain_cells=constraint is not None,
    )
    sampler = Sampler(model, tokenizer, stop_ids=stop_ids, constraint=constraint)
    items = np.asarray(items, dtype=np.int64)
    done = sampler.generate_ids(
        [prompt_ids[i] for i in items],
        settings,
        batch_size=batch_size,
        progress=progress,
        desc="held-out samples",
    )
    return SampledAnswers(
        items,
        [list(c.token_ids) for c in done],
        [c.text for c in done],
        np.asarray([c.finished for c in done], dtype=bool),
    )


def answer_logprobs(
    model,
    prompt_ids: Sequence[Sequence[int]],
    items: Sequence[int],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    temperature: float,
    batch_size: int,
    device,
    constraint=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-probability of each answer given its prompt, and its number of tokens.

    Logits are divided by ``temperature`` (the distribution the answers were sampled from).
    Positions follow the attention mask, so left-padded prompts score as unpadded ones. With a
    ``constraint`` the logits are those of the constrained policy
    (:func:`~cellrlhf.ppo.constrained_policy.masked_logits`).
    """
    import torch

    from cellrlhf.ppo.constrained_policy import masked_logits
    from cellrlhf.sampling import pad_rows

    items = np.asarray(items, dtype=np.int64)
    total = np.zeros(len(items), dtype=np.float64)
    lengths = np.asarray([len(c) for c in completion_ids], dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(items), batch_size):
                rows = range(start, min(start + batch_size, len(items)))
                prompts, pmask = pad_rows(
                    [prompt_ids[items[r]] for r in rows], pad_token_id, "left"
                )
                answers, amask = pad_rows(
                    [completion_ids[r] for r in rows], pad_token_id, "right", min_width=1
                )
                ids = torch.cat([prompts, answers], dim=1).to(device)
                mask = torch.cat([pmask, amask], dim=1).to(device)
                position_ids = (mask.cumsum(1) - 1).clamp(min=0)
                logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
                if constraint is not None:
                    logits = masked_logits(constraint, ids, logits)
                width = prompts.shape[1]
                logits = logits[:, width - 1 : -1].float() / float(temperature)
                logp = torch.log_softmax(logits, dim=-1)
                target = answers.to(device)
                token_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                token_logp = token_logp * amask.to(device)
                total[start : start + len(rows)] = token_logp.sum(1).double().cpu().numpy()
    finally:
        model.train(was_training)
    return total, lengths
