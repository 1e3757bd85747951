"""Batched, seeded generation and scoring with a chat-template model.

Everything runs under ``torch.no_grad``; inputs go to the device of the model's input embeddings
(where transformers / accelerate placed it with ``device_map``), nothing is moved elsewhere.
Decoded text keeps the cell markup tokens (``<cell>``, ``</cell>``, ``<pert>``...), which are
special tokens of the cell tokenizer, and drops only padding and the end-of-turn token.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["GenerationSettings", "Completion", "ChatGenerator"]

logger = logging.getLogger(__name__)

Conversation = Sequence[dict]


@dataclass(frozen=True)
class GenerationSettings:
    """How to sample an answer.

    Attributes
    ----------
    max_new_tokens
        Token budget of the answer.
    temperature
        ``0`` decodes greedily (deterministic); ``> 0`` samples.
    top_p, top_k
        Nucleus / top-k sampling limits (``top_k=0`` and ``top_p=1`` sample from the full
        distribution, as the RL stage does).
    seed
        Seed of the sampling RNG (forked: the global torch RNG is left untouched).
    constrain_cells
        Constrained decoding of cell sentences
        (:class:`~cellrlhf.cell2text.sentence_constraints.CellSentenceConstraint`): inside
        ``<cell> ... </cell>`` only measured genes not yet in that cell, or ``</cell>``. Needs a
        tokenizer with one token per gene (not ``genes_as_text``). Text outside cells is
        unaffected; log-probabilities stay those of the unconstrained model.
    single_cell_answer
        With ``constrain_cells``: the answer is one cell and its end of turn (it opens with
        ``<cell>``, only an end token may follow ``</cell>``, and the cell is closed in time
        for ``</cell>`` and the end token to fit ``max_new_tokens``), the grammar RL's
        constrained policy was trained under; for sampling cells (``cellrlhf evaluate``), not
        free chat.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    constrain_cells: bool = False
    single_cell_answer: bool = False

    def __post_init__(self) -> None:
        if self.single_cell_answer and not self.constrain_cells:
            raise ValueError("single_cell_answer=True is a rule of constrain_cells=True; set both.")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1.")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1].")

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
        }


@dataclass(frozen=True)
class Completion:
    """One generated answer.

    Attributes
    ----------
    text
        The answer, without padding or end-of-turn tokens.
    logprob
        Sum of the model's log-probabilities of the answer's tokens (end token included when
        reached), before temperature, top-k / top-p reshaping or the cell constraint.
    n_tokens
        Tokens generated.
    finished
        Whether the model ended its turn (``False``: it hit ``max_new_tokens``).
    """

    text: str
    logprob: float
    n_tokens: int
    finished: bool


class ChatGenerator:
    """Generate and score chat answers with a causal LM and its chat-template tokenizer.

    Parameters
    ----------
    model, tokenizer
        The causal LM and its chat-template tokenizer.
    cell_genes
        The genes a generated cell may contain (the model's gene vocabulary); needed only for
        ``GenerationSettings(constrain_cells=True)``.
    """

    def __init__(self, model, tokenizer, *, cell_genes=None):
        self.model = model
        self.tokenizer = tokenizer
        self.cell_genes = cell_genes
        self._constraints: dict[tuple, object] = {}
        stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        stop += list(gen_eos) if isinstance(gen_eos, (list, tuple)) else [gen_eos]
        self.stop_ids = [int(i) for i in dict.fromkeys(stop) if i is not None]
        if not self.stop_ids:
            raise ValueError("the tokenizer has no eos token; generation could never stop.")
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.stop_ids[0]

    # ------------------------------------------------------------------ text
    @property
    def device(self):
        return self.model.get_input_embeddings().weight.device

    def prompt_text(self, conversation: Conversation) -> str:
        """The chat template applied to ``conversation``, ready for the assistant's turn."""
        if not conversation or conversation[-1].get("role") == "assistant":
            raise ValueError("the conversation must end with a user (or system) message.")
        return self.tokenizer.apply_chat_template(
            list(conversation), tokenize=False, add_generation_prompt=True
        )

    def clean(self, ids: Sequence[int]) -> tuple[str, bool]:
        """Text of generated ``ids`` up to the first stop token, and whether one was reached."""
        stop = set(self.stop_ids) | {self.pad_id}
        kept, finished = [], False
        for i in ids:
            if i in stop:
                finished = i in self.stop_ids
                break
            kept.append(i)
        text = self.tokenizer.decode(
            kept, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        return text.strip(), finished

    def _encode(self, texts: list[str], *, padding_side: str):
        enc = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            padding_side=padding_side,
            add_special_tokens=False,
        )
        return {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask")}

    def logits_processors(self, settings: GenerationSettings):
        """The ``logits_processor`` list for ``generate`` (empty unless ``constrain_cells``)."""
        from transformers import LogitsProcessorList

        if not settings.constrain_cells:
            return LogitsProcessorList()
        single = bool(settings.single_cell_answer)
        key = (single, settings.max_new_tokens if single else None)
        if key not in self._constraints:
            from cellrlhf.cell2text.sentence_constraints import CellSentenceConstraint

            if self.cell_genes is None:
                raise ValueError(
                    "constrain_cells=True needs the model's genes: build the ChatGenerator with "
                    "cell_genes=<GeneVocab> (CellLM does)."
                )
            self._constraints[key] = CellSentenceConstraint(
                self.tokenizer,
                self.cell_genes,
                single_cell_answer=single,
                end_ids=self.stop_ids,
                max_answer_tokens=key[1],
            )
        return LogitsProcessorList([self._constraints[key]])

    def _rng(self):
        import torch

        device = self.device
        cuda = [device.index or 0] if device.type == "cuda" else []
        return torch.random.fork_rng(devices=cuda)

    # ------------------------------------------------------------------ generate
    def generate(
        self,
        conversations: Sequence[Conversation],
        settings: GenerationSettings,
        *,
        batch_size: int = 16,
        progress: bool = False,
        desc: str = "generate",
        logprobs: bool = False,
    ) -> list[Completion]:
        """One answer per conversation, generated ``batch_size`` at a time.

        ``logprobs=True`` fills :attr:`Completion.logprob` (it keeps the logits of every step,
        so use it for short answers); otherwise ``logprob`` is NaN.
        """
        import torch
        from tqdm.auto import tqdm

        texts = [self.prompt_text(c) for c in conversations]
        out: list[Completion] = []
        starts = range(0, len(texts), max(1, int(batch_size)))
        with self._rng(), torch.no_grad():
            torch.manual_seed(settings.seed)
            for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
                enc = self._encode(texts[start : start + batch_size], padding_side="left")
                result = self.model.generate(
                    **enc,
                    max_new_tokens=self._budget(enc, settings.max_new_tokens),
                    pad_token_id=self.pad_id,
                    eos_token_id=self.stop_ids,
                    return_dict_in_generate=True,
                    output_logits=logprobs,
                    logits_processor=self.logits_processors(settings),
                    **settings.generate_kwargs(),
                )
                new = result.sequences[:, enc["input_ids"].shape[1] :]
                scores = _token_logprobs(result.logits, new) if logprobs else None
                for i, row in enumerate(new.tolist()):
                    text, finished = self.clean(row)
                    n = _n_answer_tokens(row, self.stop_ids, self.pad_id)
                    lp = float(scores[i, :n].sum()) if scores is not None else float("nan")
                    out.append(Completion(text, lp, n, finished))
        return out

    def _budget(self, enc, max_new_tokens: int) -> int:
        """``max_new_tokens``, capped so prompt + answer fit the model's context."""
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        n_prompt = int(enc["input_ids"].shape[1])
        if not limit:
            return max_new_tokens
        room = int(limit) - n_prompt
        if room < 1:
            raise ValueError(
                f"the prompt is {n_prompt} tokens long and fills the model's context of {limit} "
                "tokens; shorten the conversation (start a new one) or the cell sentences."
            )
        return min(max_new_tokens, room)

    def stream(self, conversation: Conversation, settings: GenerationSettings) -> Iterator[str]:
        """Yield the answer's text piece by piece as it is generated (one conversation)."""
        import torch

        streamer = _AnswerStreamer(self)
        processors = self.logits_processors(settings)
        enc = self._encode([self.prompt_text(conversation)], padding_side="left")
        budget = self._budget(enc, settings.max_new_tokens)
        failure: list[BaseException] = []
        cancel = threading.Event()  # set when the consumer stops reading (Ctrl-C, closed)

        def run() -> None:
            try:
                with self._rng(), torch.no_grad():
                    torch.manual_seed(settings.seed)
                    self.model.generate(
                        **enc,
                        max_new_tokens=budget,
                        pad_token_id=self.pad_id,
                        eos_token_id=self.stop_ids,
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

    # ------------------------------------------------------------------ score
    def score_answers(
        self, conversation: Conversation, answers: Sequence[str], *, batch_size: int = 16
    ) -> np.ndarray:
        """Log-probability of each complete ``answers[i]`` (end of turn included) as the reply.

        The answer tokens are the tokens the chat template appends to the prompt when the
        assistant turn is added, so the score covers exactly what generation would produce.
        """
        import torch

        prompt = self.prompt_text(conversation)
        n_prompt = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        fulls = [
            self.tokenizer.apply_chat_template(
                [*conversation, {"role": "assistant", "content": a}], tokenize=False
            )
            for a in answers
        ]
        for full in fulls:
            if not full.startswith(prompt):
                raise ValueError(
                    "the chat template renders the prompt differently once an answer is added; "
                    "answers cannot be scored with this template."
                )
        scores = np.zeros(len(fulls), dtype=np.float64)
        with torch.no_grad():
            for start in range(0, len(fulls), max(1, int(batch_size))):
                enc = self._encode(fulls[start : start + batch_size], padding_side="right")
                logits = self.model(**enc).logits.float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                target = enc["input_ids"][:, 1:]
                token_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                mask = enc["attention_mask"][:, 1:].clone()
                mask[:, : n_prompt - 1] = 0
                # keep the answer up to and including its first stop token (drop text after it)
                for row in range(target.shape[0]):
                    ids = target[row].tolist()
                    for pos in range(n_prompt - 1, len(ids)):
                        if ids[pos] in self.stop_ids and mask[row, pos]:
                            mask[row, pos + 1 :] = 0
                            break
                scores[start : start + len(enc["input_ids"])] = (
                    (token_lp * mask).sum(-1).cpu().numpy()
                )
        return scores


def _cancellation(event: threading.Event):
    """A ``stopping_criteria`` list that ends generation once ``event`` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), device=input_ids.device)

    return StoppingCriteriaList([_Cancelled()])


def _token_logprobs(scores, new_tokens) -> np.ndarray:
    """Log-probabilities of the chosen tokens under the model's own (unprocessed) distribution."""
    import torch

    if not scores:
        return np.zeros(new_tokens.shape, dtype=np.float64)
    stacked = torch.stack(scores, dim=1).float()  # (batch, steps, vocab)
    logp = torch.log_softmax(stacked, dim=-1)
    chosen = logp.gather(-1, new_tokens[:, : stacked.shape[1]].unsqueeze(-1)).squeeze(-1)
    chosen = torch.nan_to_num(chosen, neginf=0.0)
    return chosen.cpu().numpy().astype(np.float64)


def _n_answer_tokens(row: Sequence[int], stop_ids: Sequence[int], pad_id: int) -> int:
    """Tokens of the answer including its stop token, excluding padding after it."""
    for pos, token in enumerate(row):
        if token in stop_ids:
            return pos + 1
        if token == pad_id:
            return pos
    return len(row)


class _AnswerStreamer:
    """Iterator of answer text pieces fed by ``generate(streamer=...)`` from another thread.

    Decodes the growing answer (markup kept, stop and pad tokens dropped) and yields what was
    added, holding back a trailing partial word so gene symbols never arrive split.
    """

    def __init__(self, generator: ChatGenerator):
        import queue

        self._gen = generator
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
            if token in self._gen.stop_ids or token == self._gen.pad_id:
                self._stopped = True
                break
            self._ids.append(int(token))
        text, _ = self._gen.clean(self._ids)
        cut = text.rfind(" ") + 1 if not self._stopped else len(text)
        if cut > self._sent:
            self._queue.put(text[self._sent : cut])
            self._sent = cut

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        text, _ = self._gen.clean(self._ids)
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
