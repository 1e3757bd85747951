"""Learned reward of sampled answers, scored from token ids exactly as PPO scores them.

PPO feeds the reward model the policy's own token ids (prompt + answer up to and including
its end token); the held-out monitor does the same, so the learned reward it logs is the
number the policy is optimising, next to the true held-out fidelity.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["score_answer_ids"]


def score_answer_ids(
    reward_model,
    prompt_ids: Sequence[Sequence[int]],
    items: Sequence[int],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    batch_size: int,
    device,
) -> np.ndarray:
    """Score ``prompt_ids[items[i]] + completion_ids[i]`` with a one-label reward model.

    Sequences are right-padded; the model's score is read at the last real token (the
    sequence-classification head finds it through ``config.pad_token_id``, which must be the
    tokenizer's pad id).

    Raises
    ------
    ValueError
        When the reward model's ``pad_token_id`` is not the tokenizer's.
    """
    import torch

    model_pad = getattr(getattr(reward_model, "config", None), "pad_token_id", pad_token_id)
    if model_pad != pad_token_id:
        raise ValueError(
            f"the reward model's pad_token_id ({model_pad}) differs from the tokenizer's "
            f"({pad_token_id}); its score would be read at the wrong position."
        )
    items = np.asarray(items, dtype=np.int64)
    scores = np.zeros(len(items), dtype=np.float64)
    was_training = reward_model.training
    reward_model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(items), batch_size):
                rows = [
                    list(prompt_ids[items[r]]) + list(completion_ids[r])
                    for r in range(start, min(start + batch_size, len(items)))
                ]
                width = max(len(r) for r in rows)
                ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for k, r in enumerate(rows):
                    ids[k, : len(r)] = torch.tensor(r, dtype=torch.long)
                    mask[k, : len(r)] = 1
                out = reward_model(input_ids=ids.to(device), attention_mask=mask.to(device))
                scores[start : start + len(rows)] = out.logits[:, 0].double().cpu().numpy()
    finally:
        reward_model.train(was_training)
    return scores
