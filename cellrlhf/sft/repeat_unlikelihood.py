"""Unlikelihood loss against writing a gene twice in one cell.

Small cell language models lose track of the genes they have already written: the probability
they give to a gene already in the current cell grows with the position in the cell, and
duplicates are their main kind of invalid output (BENCHMARKS.md, "Validity of generated cell
sentences"). Token-level unlikelihood training (Welleck et al., 2020, "Neural text generation
with unlikelihood training") targets exactly this: at every position inside ``<cell> ...
</cell>`` whose next token is trained on, it adds

    -log(1 - sum of p(g) over the genes g already written in this cell)

to the loss, so the model learns to keep that mass near zero. The gene being predicted is
never in the set (real cells hold each gene once), so the term does not fight the usual
cross-entropy.

A cell starts at ``<cell>`` and ends at ``</cell>`` or where a new sequence starts
(``position_ids == 0`` in padding-free packed batches), so packed pretraining blocks are
handled too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from cellrlhf.cell2text.markup import CELL_END, CELL_START
from cellrlhf.cell2text.vocab import GeneVocab

__all__ = ["RepeatTerms", "RepeatUnlikelihood", "repeat_unlikelihood_terms"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepeatTerms:
    """Sums over the trained positions inside cells of one batch.

    Attributes
    ----------
    unlikelihood
        Sum of ``-log(1 - repeat mass)`` (differentiable).
    repeat_mass
        Sum of the probability given to genes already written (detached).
    positions
        Number of positions that entered the sums.
    """

    unlikelihood: object
    repeat_mass: object
    positions: int


def repeat_unlikelihood_terms(
    logits,
    input_ids,
    *,
    is_gene,
    cell_start_id: int,
    cell_end_id: int,
    labels=None,
    position_ids=None,
) -> RepeatTerms:
    """Unlikelihood of already-written genes at each trained position inside a cell.

    Parameters
    ----------
    logits
        ``(batch, length, vocab)`` next-token logits of ``input_ids``.
    input_ids
        ``(batch, length)`` token ids.
    is_gene
        ``(vocab,)`` bool tensor, ``True`` for gene tokens.
    cell_start_id, cell_end_id
        Ids of ``<cell>`` and ``</cell>``.
    labels
        ``(batch, length)``; positions labelled ``-100`` are not trained on and are skipped.
        ``None``: every position is trained on.
    position_ids
        ``(batch, length)``; a ``0`` starts a new sequence (padding-free packing).

    Returns
    -------
    :class:`RepeatTerms` for the predictions of tokens ``1 .. length - 1``.
    """
    import torch
    import torch.nn.functional as F

    batch, length = input_ids.shape
    device = input_ids.device
    if length < 2:
        zero = logits.sum() * 0.0
        return RepeatTerms(zero, zero.detach(), 0)
    positions = torch.arange(length, device=device).expand(batch, length)
    none = torch.full_like(positions, -1)
    # a cell ends at its </cell>, or just before a new packed sequence starts
    reset_at = torch.where(input_ids == cell_end_id, positions, none)
    if position_ids is not None:
        starts = position_ids.to(device) == 0
        reset_at = torch.maximum(reset_at, torch.where(starts, positions - 1, none))
    last_open = torch.where(input_ids == cell_start_id, positions, none).cummax(dim=1).values
    last_reset = reset_at.cummax(dim=1).values
    in_cell = last_open > last_reset  # the <cell> token itself included
    trained = torch.ones_like(in_cell) if labels is None else labels != -100

    # predictions made at t (of token t + 1) that count: inside a cell, next token trained on
    rows = in_cell[:, :-1] & trained[:, 1:]
    n_positions = int(rows.sum())
    if n_positions == 0:
        zero = logits.sum() * 0.0
        return RepeatTerms(zero, zero.detach(), 0)

    # the genes written so far lie within the last `window` positions of every counted t
    window = int((positions - last_open)[:, :-1][rows].max()) + 1
    window = min(window, length)
    gene = is_gene.to(device)[input_ids] & in_cell

    def look_back(values, fill):
        """``out[b, t, k] = values[b, t - window + 1 + k]`` (``fill`` before the start)."""
        padded = F.pad(values, (window - 1, 0), value=fill)
        return padded.unfold(1, window, 1)

    back_ids = look_back(input_ids, -1)
    back_pos = positions.unsqueeze(-1) - window + 1 + torch.arange(window, device=device)
    same_cell = back_pos > last_open.unsqueeze(-1)
    # a gene counts once: its first occurrence in the cell (earlier copies in the window)
    earlier = same_cell[..., :-1] & (back_ids[..., :-1] == input_ids.unsqueeze(-1))
    first = gene & ~earlier.any(dim=-1)
    written = same_cell & look_back(first.to(torch.int8), 0).bool()

    shift_logits = logits[:, :-1]
    next_ids = input_ids[:, 1:]
    candidates = written[:, :-1] & (back_ids[:, :-1] != next_ids.unsqueeze(-1))
    candidates &= rows.unsqueeze(-1)
    gather_ids = back_ids[:, :-1].clamp(min=0)
    picked = shift_logits.gather(-1, gather_ids).float()
    log_norm = torch.logsumexp(shift_logits.float(), dim=-1, keepdim=True)
    probs = torch.exp(picked - log_norm) * candidates
    mass = probs.sum(dim=-1).clamp(max=1.0 - 1e-6)
    unlikelihood = -torch.log1p(-mass)
    return RepeatTerms(
        unlikelihood=unlikelihood[rows].sum(),
        repeat_mass=mass[rows].sum().detach(),
        positions=n_positions,
    )


class RepeatUnlikelihood:
    """The unlikelihood term for one tokenizer and gene set, with its weight.

    Parameters
    ----------
    tokenizer
        The model's tokenizer with one token per gene and single-token cell markup.
    genes
        Genes whose repeats are penalised (the measured genes).
    weight
        Multiplier of the term in the training loss (> 0).

    Raises
    ------
    ValueError
        For a ``genes_as_text`` tokenizer, multi-token markup, or no gene token at all.
    """

    def __init__(self, tokenizer, genes: GeneVocab | Iterable[str], weight: float) -> None:
        from cellrlhf.cell2text.tokenizer import gene_token_ids, markup_token_id, tokenizer_mode

        if not weight > 0:
            raise ValueError(
                f"repeat_unlikelihood_weight must be > 0 to build the term, got {weight}."
            )
        if tokenizer_mode(tokenizer) == "genes_as_text":
            raise ValueError(
                "repeat_unlikelihood_weight needs one token per gene; this tokenizer writes genes as "
                "text (mode 'genes_as_text'). Set repeat_unlikelihood_weight: 0, or use gene tokens."
            )
        self.cell_start_id = markup_token_id(tokenizer, CELL_START, needed_by="the repeat penalty")
        self.cell_end_id = markup_token_id(tokenizer, CELL_END, needed_by="the repeat penalty")
        ids = [i for i in gene_token_ids(tokenizer, genes) if i >= 0]
        if not ids:
            raise ValueError(
                "no gene is a single token of this tokenizer; cannot penalise repeats."
            )
        self.gene_ids = sorted(set(ids))
        self.weight = float(weight)
        self._is_gene = None

    def is_gene(self, n_vocab: int):
        import torch

        if self._is_gene is None or self._is_gene.numel() != n_vocab:
            if n_vocab <= self.gene_ids[-1]:
                raise ValueError(
                    f"the logits have {n_vocab} columns but gene tokens go up to id "
                    f"{self.gene_ids[-1]}; the model and tokenizer do not match."
                )
            mask = torch.zeros(n_vocab, dtype=torch.bool)
            mask[self.gene_ids] = True
            self._is_gene = mask
        return self._is_gene

    def terms(self, logits, input_ids, *, labels=None, position_ids=None) -> RepeatTerms:
        """:func:`repeat_unlikelihood_terms` with this tokenizer's ids."""
        return repeat_unlikelihood_terms(
            logits,
            input_ids,
            is_gene=self.is_gene(logits.shape[-1]),
            cell_start_id=self.cell_start_id,
            cell_end_id=self.cell_end_id,
            labels=labels,
            position_ids=position_ids,
        )
