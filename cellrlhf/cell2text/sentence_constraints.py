"""Constrained decoding of cell sentences: valid, duplicate-free cells by construction.

A model asked for a cell writes ``<cell> G1 G2 ... </cell>``. Unconstrained, a small or
undertrained model repeats genes and drifts into prose inside the cell; the decoder then drops
those words (valid gene fraction < 1). :class:`CellSentenceConstraint` is a ``transformers``
logits processor that, at each step and for each sequence of the batch:

- outside a cell (no ``<cell>`` since the last ``</cell>``, prompt included) does nothing;
- inside an open cell allows only the measured genes' tokens not yet written in this cell,
  ``</cell>`` once the cell has a gene, and a single whitespace token between words (the cell
  tokenizer writes ``" </cell>"`` as ``"▁"`` then ``</cell>``); everything else, the end of
  turn included, gets ``-inf``. A cell is never empty, and ``</cell>`` is allowed after its
  first gene, so a row never runs out of tokens.

With ``single_cell_answer=True`` (RL completions, evaluation samples; not free chat) the answer
itself is one cell and nothing else. The answer is what follows the last ``<|assistant|>`` token
(the chat template's generation prompt, ``<|assistant|>`` then a newline), and in it:

- before the answer's ``<cell>``: only ``<cell>`` (the first answer token opens the cell);
- inside the cell: the rules above;
- after its ``</cell>``: only an end-of-turn token (``end_ids``, the tokenizer's eos by
  default), so no text, no second cell and no running into the budget after the cell;
- with ``max_answer_tokens`` (the answer budget ``B``): once the cell has used ``B - 2``
  tokens (``<cell>`` included), only ``</cell>``, so that ``</cell>`` and the end token still
  fit: a long cell is cut to its highest-ranked genes and closed, never left open by the budget.

A row without ``<|assistant|>`` raises ``ValueError`` (the answer cannot be located).

The state is read from the whole ``input_ids`` at every step (prompt included, so a prompt that
ends in ``<cell>`` continues an open cell) with tensor operations, which makes it correct for
batches with left padding and for beam search.

It needs one token per gene: tokenizers of mode ``"gene_tokens"`` or ``"added_gene_tokens"``
(:mod:`cellrlhf.cell2text.tokenizer`). For ``"genes_as_text"`` tokenizers (genes are several
word pieces) it raises ``ValueError`` rather than silently doing nothing.

The same grammar gives the mask of every position of whole sequences at once
(:meth:`CellSentenceConstraint.banned_after`), which RL uses to make the policy itself the
constrained distribution (:mod:`cellrlhf.ppo.constrained_policy`): the mask is applied when
sampling *and* when the trainer recomputes the log-probabilities of the policy, the old policy and
the reference. Passing this processor to a trainer's ``generate`` alone would be wrong: the
samples would be scored as if drawn from the unconstrained policy (biased ratios and KL).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from cellrlhf.cell2text.markup import CELL_END, CELL_START
from cellrlhf.cell2text.vocab import GeneVocab

__all__ = ["ANSWER_START", "CellSentenceConstraint", "cell_sentence_processors"]

ANSWER_START = "<|assistant|>"
"""The chat template's last token before an assistant answer (a role token of the tokenizer)."""

logger = logging.getLogger(__name__)


class CellSentenceConstraint:
    """Logits processor: inside ``<cell> ... </cell>``, only unused gene tokens or ``</cell>``.

    Parameters
    ----------
    tokenizer
        The model's tokenizer, one token per gene (modes ``"gene_tokens"`` /
        ``"added_gene_tokens"``), with ``<cell>`` and ``</cell>`` as single tokens.
    genes
        The genes a cell may contain: the measured genes (the model's ``gene_vocab.json``).
        Genes without a single token are skipped with a warning.
    single_cell_answer
        The answer (after the last ``<|assistant|>``) is exactly one cell followed by an end
        token: it opens with ``<cell>`` and only ``end_ids`` may follow its ``</cell>``. For RL
        completions and evaluation samples; free chat leaves it off.
    end_ids
        The end-of-turn tokens allowed after the answer's cell (default: the tokenizer's eos).
        Only used with ``single_cell_answer``.
    max_answer_tokens
        The answer budget (``max_new_tokens`` / ``max_completion_length``), at least 5: with
        ``single_cell_answer``, the cell is closed when only ``</cell>`` and the end token still
        fit. ``None``: no limit (a cell longer than the budget is cut open by ``generate``).
    min_genes
        A cell may close only after this many distinct genes (default 1; capped at the genes
        that have a token). For length-calibrated sampling: an undertrained model closes its
        cells early, and a pseudo-bulk of short cells sits below the control on every
        lower-ranked gene whatever the perturbation. The answer budget still wins: a cell
        that reaches it is closed.

    Raises
    ------
    ValueError
        For a ``"genes_as_text"`` tokenizer, markup that is not one token each, or no gene
        with a single token.

    Notes
    -----
    Call as ``processor(input_ids, scores)`` with ``input_ids`` ``(batch, length)`` and
    ``scores`` ``(batch, vocab)``; returns new scores (banned entries ``-inf``, the others
    unchanged). Pass it in ``model.generate(..., logits_processor=LogitsProcessorList([p]))``.
    """

    def __init__(
        self,
        tokenizer,
        genes: GeneVocab | Iterable[str],
        *,
        single_cell_answer: bool = False,
        end_ids: Iterable[int] | None = None,
        max_answer_tokens: int | None = None,
        min_genes: int = 1,
    ):
        from cellrlhf.cell2text.tokenizer import gene_token_ids, markup_token_id, tokenizer_mode

        mode = tokenizer_mode(tokenizer)
        if mode == "genes_as_text":
            raise ValueError(
                "constrained cell decoding needs one token per gene; this tokenizer reads genes "
                "as text (mode 'genes_as_text'), so a gene cannot be banned as one token. "
                "Generate unconstrained, or use a model with gene tokens."
            )
        self.cell_start_id = markup_token_id(
            tokenizer, CELL_START, needed_by="constrained cell decoding"
        )
        self.cell_end_id = markup_token_id(
            tokenizer, CELL_END, needed_by="constrained cell decoding"
        )
        symbols = list(genes.genes if isinstance(genes, GeneVocab) else genes)
        ids = gene_token_ids(tokenizer, symbols)
        missing = [g for g, i in zip(symbols, ids, strict=True) if i < 0]
        self.gene_ids = sorted({i for i in ids if i >= 0})
        if not self.gene_ids:
            raise ValueError(
                f"none of the {len(symbols)} genes is a single token of this tokenizer (mode "
                f"{mode!r}); constrained cell decoding needs gene tokens."
            )
        if missing:
            logger.warning(
                "%d gene(s) have no single token and can never be generated in a cell (e.g. %s)",
                len(missing),
                missing[:5],
            )
        self.space_ids = _whitespace_token_ids(tokenizer, self.gene_ids[0])
        self.single_cell_answer = bool(single_cell_answer)
        self.answer_start_id = None
        self.end_ids: list[int] = []
        if self.single_cell_answer:
            self.answer_start_id = markup_token_id(
                tokenizer, ANSWER_START, needed_by="a single-cell answer grammar"
            )
            if end_ids is None:
                end_ids = [tokenizer.eos_token_id]
            self.end_ids = sorted({int(i) for i in end_ids if i is not None})
            if not self.end_ids:
                raise ValueError(
                    "single_cell_answer needs an end-of-turn token (the tokenizer has no eos); "
                    "pass end_ids."
                )
        self.max_answer_tokens = None if max_answer_tokens is None else int(max_answer_tokens)
        if self.max_answer_tokens is not None and (
            not self.single_cell_answer or self.max_answer_tokens < 5
        ):
            raise ValueError(
                f"max_answer_tokens={max_answer_tokens}: a budget applies to single-cell answers "
                "(single_cell_answer=True) and must hold <cell>, a gene, a separator, </cell> "
                "and the end token (>= 5)."
            )
        if int(min_genes) < 1:
            raise ValueError(f"min_genes={min_genes}: a cell has at least one gene (>= 1).")
        self.min_genes = min(int(min_genes), len(self.gene_ids))
        self._masks: dict[tuple[int, str], tuple] = {}

    def _vocab_masks(self, n_vocab: int, device):
        """``(is_gene, allowed_inside, is_space, only_start, only_end)`` boolean vectors of length
        ``n_vocab`` (the last two: what a single-cell answer bans before / after its cell)."""
        import torch

        key = (n_vocab, str(device))
        if key not in self._masks:
            top = max(self.cell_end_id, self.gene_ids[-1], *self.end_ids)
            if n_vocab <= top:
                raise ValueError(
                    f"the scores have {n_vocab} columns but the tokenizer's cell tokens go up to "
                    f"id {top}; the model and tokenizer do not match."
                )
            is_gene = torch.zeros(n_vocab, dtype=torch.bool, device=device)
            is_gene[self.gene_ids] = True
            is_space = torch.zeros(n_vocab, dtype=torch.bool, device=device)
            is_space[[i for i in self.space_ids if i < n_vocab]] = True
            allowed = is_gene | is_space
            allowed[self.cell_end_id] = True
            not_start = torch.ones(n_vocab, dtype=torch.bool, device=device)
            not_start[self.cell_start_id] = False
            not_end = torch.ones(n_vocab, dtype=torch.bool, device=device)
            not_end[self.end_ids] = False
            self._masks[key] = (is_gene, allowed, is_space, not_start, not_end)
        return self._masks[key]

    def banned(self, input_ids, n_vocab: int):
        """``(batch, n_vocab)`` bool: the tokens each row may not write next."""
        return self.banned_after(input_ids, n_vocab, 1)[:, 0]

    def banned_after(self, input_ids, n_vocab: int, n_positions: int | None = None):
        """The tokens banned after each of the last ``n_positions`` prefixes of every row.

        Parameters
        ----------
        input_ids
            ``(batch, length)`` token ids (prompt and completion, any padding).
        n_vocab
            Columns of the logits.
        n_positions
            How many prefixes, ending at positions ``length - n_positions .. length - 1``
            (``None``: all ``length``). A causal LM's logits at position ``t`` predict token
            ``t + 1``, so the mask of its last ``n`` logits is ``banned_after(ids, V, n)``.

        Returns
        -------
        torch.Tensor
            ``(batch, n_positions, n_vocab)`` bool, ``True`` where the token is banned after
            the prefix ``input_ids[:, : t + 1]``: inside an open cell, genes already written in
            it since its ``<cell>``, any token but a gene, ``</cell>`` or one whitespace
            token, ``</cell>`` before the cell's ``min_genes``-th gene, and a whitespace token
            right after another. Outside a cell, nothing.

        Notes
        -----
        One pass of tensor operations, no loop over positions: a gene written at ``s`` is
        banned for the prefixes ``t`` in ``[s, next <cell> after s)``; these ranges are added
        into a difference array over the window and summed along positions.
        """
        import torch

        batch, length = input_ids.shape
        n = length if n_positions is None else int(n_positions)
        if not 1 <= n <= length:
            raise ValueError(f"n_positions={n_positions} for sequences of length {length}.")
        device = input_ids.device
        is_gene, allowed, is_space, not_start, not_end = self._vocab_masks(n_vocab, device)
        first = length - n
        ids = input_ids.clamp(min=0, max=n_vocab - 1)
        positions = torch.arange(length, device=device).expand(batch, length)
        opens = input_ids == self.cell_start_id
        last_open = torch.where(opens, positions, -1).cummax(dim=1).values
        last_close = torch.where(input_ids == self.cell_end_id, positions, -1).cummax(dim=1).values
        is_open = (last_open > last_close)[:, first:]
        # first <cell> strictly after each position (length where none)
        open_at = torch.where(opens, positions, length)
        next_open = open_at.flip(1).cummin(dim=1).values.flip(1)
        next_open = torch.cat([next_open[:, 1:], next_open.new_full((batch, 1), length)], dim=1)
        # each gene bans itself for the prefixes [s, next_open(s)) (window coordinates)
        lo = (positions - first).clamp(min=0)
        hi = (next_open - first).clamp(min=0, max=n)
        weight = (is_gene[ids] & (hi > lo)).to(torch.int32)
        diff = torch.zeros((batch, (n + 1) * n_vocab), dtype=torch.int32, device=device)
        diff.scatter_add_(1, lo * n_vocab + ids, weight)
        diff.scatter_add_(1, hi * n_vocab + ids, -weight)
        used = diff.view(batch, n + 1, n_vocab)[:, :n].cumsum(dim=1, dtype=torch.int32) > 0
        after_space = is_space[ids[:, first:]]
        banned = used | ~allowed[None, None, :]
        # a cell has at least min_genes genes (one by default)
        banned[:, :, self.cell_end_id] |= used.sum(dim=-1) < self.min_genes
        banned |= after_space[:, :, None] & is_space[None, None, :]  # one separator between words
        banned &= is_open[:, :, None]
        if not self.single_cell_answer:
            return banned
        answer = torch.where(input_ids == self.answer_start_id, positions, -1)
        if (answer.amax(dim=1) < 0).any():
            raise ValueError(
                f"single_cell_answer: a sequence has no {ANSWER_START} token, so its answer cannot "
                "be located; apply the chat template (add_generation_prompt=True) to the prompts."
            )
        last_answer = answer.cummax(dim=1).values
        in_answer = (positions > last_answer)[:, first:]
        opened = (last_open > last_answer)[:, first:]  # the answer's <cell> was written
        before = in_answer & ~opened
        after = in_answer & opened & ~is_open
        if self.max_answer_tokens is not None:  # only </cell> and the end token still fit
            written = (positions - last_open + 1)[:, first:]  # the cell's tokens, <cell> too
            full = in_answer & opened & is_open & (written + 2 >= self.max_answer_tokens)
            only_close = torch.ones_like(not_start)
            only_close[self.cell_end_id] = False
            banned = torch.where(full[:, :, None], only_close[None, None, :], banned)
        banned = torch.where(before[:, :, None], not_start[None, None, :], banned)
        return torch.where(after[:, :, None], not_end[None, None, :], banned)

    def __call__(self, input_ids, scores):
        banned = self.banned(input_ids, scores.shape[-1])
        return scores.masked_fill(banned, -math.inf)


def cell_sentence_processors(tokenizer, genes: GeneVocab | Iterable[str], **options):
    """A ``transformers.LogitsProcessorList`` holding one :class:`CellSentenceConstraint`
    (``options``: its keyword arguments, e.g. ``single_cell_answer=True``)."""
    from transformers import LogitsProcessorList

    return LogitsProcessorList([CellSentenceConstraint(tokenizer, genes, **options)])


def _whitespace_token_ids(tokenizer, word_id: int) -> list[int]:
    """Ids whose text after a word is only whitespace (``"▁"``, ``"Ġ"``, ``"\\n"``...).

    Decoded after a word token, so that tokenizers which drop a leading space on decode
    (SentencePiece-style) still show it.
    """
    special = set(tokenizer.all_special_ids)
    prefix = tokenizer.decode([word_id], clean_up_tokenization_spaces=False)
    candidates = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode(
        [[word_id, i] for i in candidates],
        skip_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )
    out = []
    for token_id, text in zip(candidates, texts, strict=True):
        rest = text[len(prefix) :] if text.startswith(prefix) else ""
        if rest and not rest.strip():
            out.append(token_id)
    return out
