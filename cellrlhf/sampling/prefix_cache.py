"""Encode a batch's shared prompt once: the key/value cache of a prompt every row repeats.

``cellrlhf evaluate`` answers each prompt hundreds of times (512 cells per held-out
perturbation), preference building and the RL monitor several times, so most batches hold one
prompt repeated. ``model.generate`` would run every row's prompt through the model again; here the
prompt (all but its last token) goes through once, its cache is repeated over the batch and
``generate`` starts from it. On CPU the answers are the same tokens (a test checks it) at about
half the time for prompts of ~300 tokens and answers of ~60 (``benchmarks/bench_sampler.py``).

Used only where every row of the batch is the same unpadded prompt and no process has to stay in
step with others (DeepSpeed ZeRO-3's ``synced_gpus``: a rank whose batch is not shared would
skip the extra forward pass the other ranks make). A model whose forward pass returns no cache
object is sampled as before.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["shared_prompt", "prompt_cache"]


def shared_prompt(rows: Sequence[Sequence[int]]) -> list[int] | None:
    """The prompt every one of ``rows`` is, when there are two or more of them, all the same and
    at least two tokens long; otherwise ``None``.

    ``shared_prompt([[5, 6], [5, 6]]) == [5, 6]``; ``shared_prompt([[5, 6], [5, 7]]) is None``.
    """
    if len(rows) < 2:
        return None
    first = list(rows[0])
    if len(first) < 2 or any(list(r) != first for r in rows[1:]):
        return None
    return first


def prompt_cache(model, prompt: Sequence[int], batch: int, device) -> dict:
    """``generate`` keywords that start ``batch`` copies of ``prompt`` from its encoded prefix.

    Runs ``prompt[:-1]`` through ``model`` once (the caller holds ``torch.no_grad``) and repeats
    its cache ``batch`` times; ``generate`` then encodes only the last prompt token of each row.
    Returns ``{}`` (sample as usual) when the model returns no repeatable cache.
    """
    import torch

    ids = torch.as_tensor([list(prompt[:-1])], dtype=torch.long, device=device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    for keyword in ("cache", "past_key_values"):  # transformers 5 / 4 name the cache so
        cache = getattr(out, keyword, None)
        if cache is not None and hasattr(cache, "batch_repeat_interleave"):
            cache.batch_repeat_interleave(int(batch))
            return {keyword: cache}
    return {}
