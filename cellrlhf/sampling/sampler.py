"""The one sampler: batched, seeded, left-padded, stop-trimmed and optionally constrained.

Every place a model writes answers goes through :class:`Sampler`: chat (``CellLM``), the SFT
stage's generation metrics, preference building, the RL held-out monitor and ``cellrlhf
evaluate``. Prompts are conversations (rendered with the tokenizer's chat template, generation
prompt added), raw text (tokenized with the tokenizer's special tokens, as pretraining saw it) or
token ids; batches are left-padded by hand with the pad token (or the first stop token when the
tokenizer has none).

Sampling runs under ``torch.no_grad`` in eval mode (the model's mode is restored afterwards) and
in a forked RNG seeded with ``settings.seed`` once per call, so the global torch RNG is left
untouched and the same call gives the same answers. Answers are cut at the first stop token
(the tokenizer's eos and the model's ``generation_config.eos_token_id``, or the ``stop_ids``
given) or padding; the decoded text keeps the cell markup tokens (``<cell>``, ``</cell>``...).
Inputs go to the device of the model's input embeddings (where transformers / accelerate placed
it); nothing is moved elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cellrlhf.sampling.prefix_cache import prompt_cache, shared_prompt

__all__ = [
    "GenerationSettings",
    "Completion",
    "Sampler",
    "answer_ids",
    "answer_text",
    "pad_rows",
]

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
    min_genes
        With ``constrain_cells``: a cell closes only after this many distinct genes (length-
        calibrated sampling; the answer budget still wins). Default 1.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    constrain_cells: bool = False
    single_cell_answer: bool = False
    min_genes: int = 1

    def __post_init__(self) -> None:
        if self.min_genes < 1:
            raise ValueError(f"min_genes={self.min_genes} must be >= 1.")
        if self.min_genes > 1 and not self.constrain_cells:
            raise ValueError("min_genes > 1 is a rule of constrain_cells=True; set both.")
        if self.single_cell_answer and not self.constrain_cells:
            raise ValueError("single_cell_answer=True is a rule of constrain_cells=True; set both.")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1.")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1].")

    def generate_kwargs(self) -> dict:
        """The sampling keywords of ``model.generate``."""
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
        reached), before temperature, top-k / top-p reshaping or the cell constraint; NaN unless
        asked for.
    n_tokens
        Tokens generated (the stop token included, padding excluded).
    finished
        Whether the model ended its turn (``False``: it hit ``max_new_tokens``).
    token_ids
        The answer's token ids (``n_tokens`` of them, the stop token included when reached).
    """

    text: str
    logprob: float
    n_tokens: int
    finished: bool
    token_ids: tuple[int, ...] = ()


def answer_ids(row: Sequence[int], stop_ids: Sequence[int], pad_id: int | None) -> list[int]:
    """Generated ``row`` up to and including its first stop token, or up to its first padding.

    ``answer_ids([5, 6, 2, 7], [2], 0) == [5, 6, 2]``; ``answer_ids([5, 0, 0], [2], 0) == [5]``.
    """
    kept = []
    for token in row:
        token = int(token)
        if token in stop_ids:
            kept.append(token)
            break
        if token == pad_id:
            break
        kept.append(token)
    return kept


def answer_text(tokenizer, ids: Sequence[int], stop_ids: Sequence[int]) -> str:
    """Text of answer ``ids`` up to the first stop or pad token, markup kept, stripped."""
    stop = set(int(i) for i in stop_ids) | {tokenizer.pad_token_id}
    kept = []
    for token in ids:
        if token in stop:
            break
        kept.append(int(token))
    text = tokenizer.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text.strip()


def default_stop_ids(model, tokenizer) -> list[int]:
    """The tokenizer's eos and the model's ``generation_config.eos_token_id`` (in that order)."""
    stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stop += list(gen_eos) if isinstance(gen_eos, (list, tuple)) else [gen_eos]
    return [int(i) for i in dict.fromkeys(stop) if i is not None]


class Sampler:
    """Sample and score answers of a causal LM.

    Parameters
    ----------
    model, tokenizer
        The causal LM and its tokenizer (with a chat template for conversational prompts).
    cell_genes
        The genes a generated cell may contain (the model's gene vocabulary); needed only for
        ``GenerationSettings(constrain_cells=True)`` without ``constraint``.
    stop_ids
        Tokens that end an answer; default: the tokenizer's eos and the model's
        ``generation_config.eos_token_id``.
    constraint
        A ready logits processor used for every ``constrain_cells=True`` call instead of one
        built from ``cell_genes`` (e.g. the RL constrained policy's own constraint, so sampling
        and scoring share one grammar).
    share_prompt
        Encode a batch whose rows are all one prompt once and start every row from its cache
        (:mod:`cellrlhf.sampling.prefix_cache`; the same answers, about twice as fast for long
        prompts); ``False`` encodes every row.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        cell_genes=None,
        stop_ids=None,
        constraint=None,
        share_prompt=True,
    ):
        self.model = model
        self.share_prompt = bool(share_prompt)
        self.tokenizer = tokenizer
        self.cell_genes = cell_genes
        self.constraint = constraint
        self._constraints: dict[tuple, object] = {}
        stop = default_stop_ids(model, tokenizer) if stop_ids is None else stop_ids
        self.stop_ids = [int(i) for i in dict.fromkeys(stop) if i is not None]
        if not self.stop_ids:
            raise ValueError("the tokenizer has no eos token; generation could never stop.")
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.stop_ids[0]

    # ------------------------------------------------------------------ prompts
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

    def prompt_ids(self, prompt: Conversation | str) -> list[int]:
        """Token ids of a conversation (chat template) or of a raw text (with special tokens)."""
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        text = self.prompt_text(prompt)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def clean(self, ids: Sequence[int]) -> tuple[str, bool]:
        """Text of generated ``ids`` up to the first stop token, and whether one was reached."""
        kept = answer_ids(ids, self.stop_ids, self.pad_id)
        finished = bool(kept) and kept[-1] in self.stop_ids
        return answer_text(self.tokenizer, kept, self.stop_ids), finished

    def logits_processors(self, settings: GenerationSettings):
        """The ``logits_processor`` list for ``generate`` (empty unless ``constrain_cells``)."""
        from transformers import LogitsProcessorList

        if not settings.constrain_cells:
            return LogitsProcessorList()
        if self.constraint is not None:
            return LogitsProcessorList([self.constraint])
        single = bool(settings.single_cell_answer)
        key = (single, settings.max_new_tokens if single else None, int(settings.min_genes))
        if key not in self._constraints:
            from cellrlhf.cell2text.sentence_constraints import CellSentenceConstraint

            if self.cell_genes is None:
                raise ValueError(
                    "constrain_cells=True needs the model's genes: build the Sampler with "
                    "cell_genes=<GeneVocab> (CellLM does)."
                )
            self._constraints[key] = CellSentenceConstraint(
                self.tokenizer,
                self.cell_genes,
                single_cell_answer=single,
                end_ids=self.stop_ids,
                max_answer_tokens=key[1],
                min_genes=key[2],
            )
        return LogitsProcessorList([self._constraints[key]])

    def forked_rng(self):
        """A context forking the CPU RNG and the model's CUDA device's RNG."""
        import torch

        device = self.device
        cuda = [device.index or 0] if device.type == "cuda" else []
        return torch.random.fork_rng(devices=cuda)

    def budget(self, n_prompt: int, max_new_tokens: int) -> int:
        """``max_new_tokens``, capped so an ``n_prompt``-token prompt and its answer fit the context."""
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if not limit:
            return max_new_tokens
        room = int(limit) - int(n_prompt)
        if room < 1:
            raise ValueError(
                f"the prompt is {n_prompt} tokens long and fills the model's context of {limit} "
                "tokens; shorten the conversation (start a new one) or the cell sentences."
            )
        return min(max_new_tokens, room)

    # ------------------------------------------------------------------ generate
    def generate(
        self,
        prompts: Sequence[Conversation | str],
        settings: GenerationSettings,
        **kwargs,
    ) -> list[Completion]:
        """One answer per prompt (a conversation or a raw text); see :meth:`generate_ids`."""
        return self.generate_ids([self.prompt_ids(p) for p in prompts], settings, **kwargs)

    def generate_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        settings: GenerationSettings,
        *,
        batch_size: int = 16,
        progress: bool = False,
        desc: str = "generate",
        logprobs: bool = False,
        synced_gpus: bool = False,
    ) -> list[Completion]:
        """One answer per prompt of token ids, generated ``batch_size`` at a time.

        The RNG is seeded once per call with ``settings.seed``, so the answers depend on the
        prompts, the settings and ``batch_size`` (batches draw from one random stream).
        ``logprobs=True`` fills :attr:`Completion.logprob` (it keeps the logits of every step,
        so use it for short answers); otherwise ``logprob`` is NaN. ``synced_gpus`` is for
        DeepSpeed ZeRO-3 (every process must call with the same number of batches).
        """
        import torch
        from tqdm.auto import tqdm

        size = max(1, int(batch_size))
        processors = self.logits_processors(settings)
        out: list[Completion] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with self.forked_rng(), torch.no_grad():
                torch.manual_seed(settings.seed)
                starts = range(0, len(prompt_ids), size)
                for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
                    rows = prompt_ids[start : start + size]
                    ids, mask = pad_rows(rows, self.pad_id, "left")
                    budget = self.budget(ids.shape[1], settings.max_new_tokens)
                    shared = None if synced_gpus or not self.share_prompt else shared_prompt(rows)
                    cached = {}
                    if shared is not None:
                        cached = prompt_cache(self.model, shared, len(rows), self.device, budget)
                    result = self.model.generate(
                        input_ids=ids.to(self.device),
                        attention_mask=mask.to(self.device),
                        max_new_tokens=budget,
                        pad_token_id=self.pad_id,
                        eos_token_id=self.stop_ids,
                        return_dict_in_generate=True,
                        output_logits=logprobs,
                        logits_processor=processors,
                        synced_gpus=synced_gpus,
                        **cached,
                        **settings.generate_kwargs(),
                    )
                    new = result.sequences[:, ids.shape[1] :]
                    scores = _token_logprobs(result.logits, new) if logprobs else None
                    for i, row in enumerate(new.tolist()):
                        out.append(self._completion(row, scores[i] if logprobs else None))
        finally:
            self.model.train(was_training)
        return out

    def _completion(self, row: list[int], scores) -> Completion:
        kept = answer_ids(row, self.stop_ids, self.pad_id)
        finished = bool(kept) and kept[-1] in self.stop_ids
        text = answer_text(self.tokenizer, kept, self.stop_ids)
        lp = float(scores[: len(kept)].sum()) if scores is not None else float("nan")
        return Completion(text, lp, len(kept), finished, tuple(kept))

    def stream(self, conversation: Conversation, settings: GenerationSettings) -> Iterator[str]:
        """Yield the answer's text piece by piece as it is generated (one conversation)."""
        from cellrlhf.sampling.streaming import stream_answer

        return stream_answer(self, conversation, settings)

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
        rows = [self.tokenizer(f, add_special_tokens=False)["input_ids"] for f in fulls]
        scores = np.zeros(len(fulls), dtype=np.float64)
        with torch.no_grad():
            for start in range(0, len(rows), max(1, int(batch_size))):
                ids, attention = pad_rows(rows[start : start + batch_size], self.pad_id, "right")
                ids, attention = ids.to(self.device), attention.to(self.device)
                logits = self.model(input_ids=ids, attention_mask=attention).logits.float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                target = ids[:, 1:]
                token_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                mask = attention[:, 1:].clone()
                mask[:, : n_prompt - 1] = 0
                # keep the answer up to and including its first stop token (drop text after it)
                for row in range(target.shape[0]):
                    tokens = target[row].tolist()
                    for pos in range(n_prompt - 1, len(tokens)):
                        if tokens[pos] in self.stop_ids and mask[row, pos]:
                            mask[row, pos + 1 :] = 0
                            break
                scores[start : start + len(ids)] = (token_lp * mask).sum(-1).cpu().numpy()
        return scores


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, side: str, *, min_width: int = 0):
    """``(input_ids, attention_mask)`` long tensors of ``rows`` padded with ``pad_id`` on ``side``
    (``"left"`` or ``"right"``) to the longest row, at least ``min_width`` columns."""
    import torch

    width = max(max((len(r) for r in rows), default=0), int(min_width))
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        if not len(row):
            continue
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[k, span] = torch.as_tensor(list(row), dtype=torch.long)
        mask[k, span] = 1
    return ids, mask


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
