"""Encode a batch's shared prompt once: the key/value cache of a prompt every row repeats.

``cellrlhf evaluate`` answers each prompt hundreds of times (512 cells per held-out
perturbation) and the RL monitor each validation prompt several times, so their batches hold one
prompt repeated. ``model.generate`` would run every row's prompt through the model again; here the
prompt (all but its last token) goes through once, its cache is repeated over the batch and
``generate`` starts from it, with room reserved for the answer so that no step copies the cache
to grow it. On CPU the answers are the same tokens (a test checks it) in well under half the
time for prompts of ~300 tokens and answers of ~60 (``benchmarks/bench_sampler.py``).

Used only where every row of the batch is the same unpadded prompt and no process has to stay in
step with others (DeepSpeed ZeRO-3's ``synced_gpus``: a rank whose batch is not shared would
skip the extra forward pass the other ranks make). A model whose forward pass returns no cache
object is sampled as before.
"""

from __future__ import annotations

import functools
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


def prompt_cache(model, prompt: Sequence[int], batch: int, device, max_new_tokens: int) -> dict:
    """``generate`` keywords that start ``batch`` copies of ``prompt`` from its encoded prefix.

    Runs ``prompt[:-1]`` through ``model`` once (the caller holds ``torch.no_grad``) and repeats
    its cache ``batch`` times; ``generate`` then encodes only the last prompt token of each row.
    The cache's layers get room for ``max_new_tokens`` more tokens up front, so a generation
    step writes its keys and values in place instead of copying the whole cache to grow it.
    Returns ``{}`` (sample as usual) when the model returns no repeatable cache.
    """
    import torch

    ids = torch.as_tensor([list(prompt[:-1])], dtype=torch.long, device=device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    for keyword in ("cache", "past_key_values"):  # transformers 5 / 4 name the cache so
        cache = getattr(out, keyword, None)
        if cache is not None and hasattr(cache, "batch_repeat_interleave"):
            cache.batch_repeat_interleave(int(batch))
            _reserve(cache, len(prompt) + int(max_new_tokens))
            return {keyword: cache}
    return {}


def _reserve(cache, capacity: int) -> None:
    """Swap the cache's plain growing layers for ones with room for ``capacity`` tokens (left
    alone unless every layer is a filled ``DynamicLayer``)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(x) is not DynamicLayer or not x.is_initialized for x in layers):
        return
    reserved = _reserved_layer_class()
    cache.layers = [reserved(x.keys, x.values, capacity) for x in layers]


@functools.cache
def _reserved_layer_class():
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values are views of buffers of ``capacity``
        tokens; an update writes into the buffers. Past the capacity, or once something else
        replaced the views (beam reordering, cropping), it grows by concatenation as usual."""

        def __init__(self, keys, values, capacity: int):
            super().__init__()
            self.lazy_initialization(keys, values)
            n = keys.shape[-2]
            self._buffers = []
            for states in (keys, values):
                buffer = states.new_empty(*states.shape[:-2], max(capacity, n), states.shape[-1])
                buffer[..., :n, :] = states
                self._buffers.append(buffer)
            self.keys, self.values = (b[..., :n, :] for b in self._buffers)

        def update(self, key_states, value_states, *args, **kwargs):
            keys, values = self._buffers
            n = self.keys.shape[-2]
            end = n + key_states.shape[-2]
            in_place = (
                end <= keys.shape[-2]
                and self.keys.data_ptr() == keys.data_ptr()
                and self.values.data_ptr() == values.data_ptr()
                and self.keys.shape[:-2] == keys.shape[:-2]
            )
            if not in_place:
                return super().update(key_states, value_states, *args, **kwargs)
            keys[..., n:end, :] = key_states
            values[..., n:end, :] = value_states
            self.keys, self.values = keys[..., :end, :], values[..., :end, :]
            return self.keys, self.values

    return ReservedLayer
