"""Sampling answers to held-out prompts, and their log-probabilities under any model.

Used by the held-out monitor: answers are sampled from the policy with the training
temperature (plain ancestral sampling, ``top_k=0``, ``top_p=1``, as TRL's trainers sample),
cut after the first end token, and scored under the policy and the frozen reference for a
Monte-Carlo estimate of ``KL(policy || reference)`` (``mean log pi - log pi_ref`` over the
sampled answers, on temperature-scaled logits as TRL computes its KL term).

With a ``constraint`` (a constrained policy, :mod:`cellrlhf.ppo.constrained_policy`) answers
are sampled under the cell grammar and scored with the same masked logits.

The caller places the models (accelerate); sampling runs in a forked RNG so the training
random streams are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SampledAnswers", "sample_answers", "answer_logprobs", "answer_text"]


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


def answer_text(tokenizer, ids: Sequence[int], stop_ids: Sequence[int]) -> str:
    """Decode answer ids up to the first end token, keeping markup, dropping pad / end tokens."""
    stop = set(stop_ids) | {tokenizer.pad_token_id}
    kept = []
    for i in ids:
        if i in stop:
            break
        kept.append(int(i))
    return tokenizer.decode(
        kept, skip_special_tokens=False, clean_up_tokenization_spaces=False
    ).strip()


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
    device,
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
        Generation budget, sampling temperature (> 0) and end tokens.
    batch_size
        Answers per ``generate`` call.
    seed
        Seed of the forked RNG (the same seed gives the same answers for the same model).
    device
        Where the inputs go (the model's device).
    progress
        Show a progress bar.
    constraint
        A :class:`~cellrlhf.cell2text.sentence_constraints.CellSentenceConstraint` to sample
        under (``None``: unconstrained).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, LogitsProcessorList

    if temperature <= 0:
        raise ValueError(f"temperature={temperature}; sampling needs a temperature > 0.")
    pad = tokenizer.pad_token_id
    config = GenerationConfig(
        do_sample=True,
        temperature=float(temperature),
        top_k=0,
        top_p=1.0,
        max_new_tokens=int(max_new_tokens),
        eos_token_id=list(stop_ids),
        pad_token_id=pad,
    )
    items = np.asarray(items, dtype=np.int64)
    stop = set(int(s) for s in stop_ids)
    completions: list[list[int]] = []
    finished: list[bool] = []
    was_training = model.training
    model.eval()
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch.manual_seed(int(seed))
            starts = range(0, len(items), batch_size)
            for start in tqdm(starts, desc="held-out samples", disable=not progress, leave=False):
                batch = [list(prompt_ids[i]) for i in items[start : start + batch_size]]
                ids, mask = _left_pad(batch, pad, torch)
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=config,
                    logits_processor=LogitsProcessorList([constraint] if constraint else []),
                )
                for row in out[:, ids.shape[1] :].tolist():
                    cut = next((k for k, t in enumerate(row) if t in stop), None)
                    completions.append(row[: cut + 1] if cut is not None else _strip_pad(row, pad))
                    finished.append(cut is not None)
    finally:
        model.train(was_training)
    texts = [answer_text(tokenizer, c, list(stop)) for c in completions]
    return SampledAnswers(items, completions, texts, np.asarray(finished, dtype=bool))


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

    items = np.asarray(items, dtype=np.int64)
    total = np.zeros(len(items), dtype=np.float64)
    lengths = np.asarray([len(c) for c in completion_ids], dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(items), batch_size):
                rows = range(start, min(start + batch_size, len(items)))
                prompts, pmask = _left_pad(
                    [list(prompt_ids[items[r]]) for r in rows], pad_token_id, torch
                )
                answers, amask = _right_pad(
                    [list(completion_ids[r]) for r in rows], pad_token_id, torch
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


def _left_pad(rows: list[list[int]], pad: int, torch):
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        if r:
            ids[k, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[k, width - len(r) :] = 1
    return ids, mask


def _right_pad(rows: list[list[int]], pad: int, torch):
    width = max(max((len(r) for r in rows), default=0), 1)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        if r:
            ids[k, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[k, : len(r)] = 1
    return ids, mask


def _strip_pad(row: list[int], pad: int) -> list[int]:
    end = len(row)
    while end > 0 and row[end - 1] == pad:
        end -= 1
    return row[:end]
