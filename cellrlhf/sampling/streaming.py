"""Streaming one answer of a :class:`~cellrlhf.sampling.sampler.Sampler` as it is generated.

``generate`` runs in a worker thread (seeded in a forked RNG, like every sampler call) and feeds
an iterator of text pieces; a consumer that stops reading cancels generation at the next token.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

__all__ = ["stream_answer"]


def stream_answer(sampler, conversation, settings) -> Iterator[str]:
    """Yield the answer of ``sampler`` to ``conversation`` piece by piece."""
    import torch

    from cellrlhf.sampling.sampler import pad_rows

    streamer = _AnswerStreamer(sampler)
    processors = sampler.logits_processors(settings)
    ids, mask = pad_rows([sampler.prompt_ids(conversation)], sampler.pad_id, "left")
    budget = sampler.budget(ids.shape[1], settings.max_new_tokens)
    failure: list[BaseException] = []
    cancel = threading.Event()  # set when the consumer stops reading (Ctrl-C, closed)

    def run() -> None:
        try:
            with sampler.forked_rng(), torch.no_grad():
                torch.manual_seed(settings.seed)
                sampler.model.generate(
                    input_ids=ids.to(sampler.device),
                    attention_mask=mask.to(sampler.device),
                    max_new_tokens=budget,
                    pad_token_id=sampler.pad_id,
                    eos_token_id=sampler.stop_ids,
                    streamer=streamer,
                    logits_processor=processors,
                    stopping_criteria=_cancellation(cancel),
                    **settings.generate_kwargs(),
                )
        except BaseException as err:  # surfaced in the consumer's thread
            failure.append(err)
            streamer.end()

    thread = threading.Thread(target=run, name="cellrlhf-generate", daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:
        cancel.set()  # a cancelled answer stops generating at the next token
    thread.join()
    if failure:
        raise failure[0]


def _cancellation(event: threading.Event):
    """A ``stopping_criteria`` list that ends generation once ``event`` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), device=input_ids.device)

    return StoppingCriteriaList([_Cancelled()])


class _AnswerStreamer:
    """Iterator of answer text pieces fed by ``generate(streamer=...)`` from another thread.

    Decodes the growing answer (markup kept, stop and pad tokens dropped) and yields what was
    added, holding back a trailing partial word so gene symbols never arrive split.
    """

    def __init__(self, sampler):
        import queue

        self._sampler = sampler
        self._queue: queue.Queue = queue.Queue()
        self._ids: list[int] = []
        self._sent = 0
        self._prompt_seen = False
        self._stopped = False
        self._ended = False
        self._done = object()

    # called by generate()
    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self._stopped:
            return
        for token in value.reshape(-1).tolist():
            if token in self._sampler.stop_ids or token == self._sampler.pad_id:
                self._stopped = True
                break
            self._ids.append(int(token))
        text, _ = self._sampler.clean(self._ids)
        cut = text.rfind(" ") + 1 if not self._stopped else len(text)
        if cut > self._sent:
            self._queue.put(text[self._sent : cut])
            self._sent = cut

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        text, _ = self._sampler.clean(self._ids)
        if len(text) > self._sent:
            self._queue.put(text[self._sent :])
            self._sent = len(text)
        self._queue.put(self._done)

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self._queue.get()
            if item is self._done:
                return
            yield item
