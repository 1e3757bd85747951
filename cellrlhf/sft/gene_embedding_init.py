"""Initialise new gene-token embeddings from what a pretrained LM already knows about the symbol.

When a gene symbol such as ``KLF1`` becomes one new token of a pretrained LM's tokenizer, its
embedding row starts as the mean of the LM's embeddings of the text pieces the symbol was split
into before (``K``, ``LF``, ``1``), so knowledge of gene names carries into the new token.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence

__all__ = ["init_gene_embeddings", "mean_piece_rows"]

logger = logging.getLogger(__name__)


def mean_piece_rows(weight, pieces: Mapping[int, Sequence[int]]):
    """Mean of ``weight``'s rows over each new token's pieces.

    Parameters
    ----------
    weight
        ``(vocab, hidden)`` tensor.
    pieces
        New token id -> ids of the pieces it replaces. Tokens with no pieces are skipped.

    Returns
    -------
    tuple
        ``(token_ids, rows)``: a 1-D long tensor and the ``(n, hidden)`` means, in ``weight``'s dtype.
    """
    import torch

    items = [(tok, list(ids)) for tok, ids in pieces.items() if len(ids) > 0]
    if not items:
        return torch.empty(0, dtype=torch.long), weight.new_empty((0, weight.shape[1]))
    vocab = weight.shape[0]
    for tok, ids in items:
        bad = [i for i in ids if not 0 <= i < vocab] + ([tok] if not 0 <= tok < vocab else [])
        if bad:
            raise ValueError(f"token ids {bad} are outside the embedding matrix ({vocab} rows).")
    targets = torch.tensor([tok for tok, _ in items], dtype=torch.long, device=weight.device)
    flat = torch.tensor(
        [i for _, ids in items for i in ids], dtype=torch.long, device=weight.device
    )
    owner = torch.repeat_interleave(
        torch.arange(len(items), device=weight.device),
        torch.tensor([len(ids) for _, ids in items], device=weight.device),
    )
    sums = torch.zeros((len(items), weight.shape[1]), dtype=torch.float32, device=weight.device)
    sums.index_add_(0, owner, weight.detach()[flat].float())
    counts = torch.bincount(owner, minlength=len(items)).clamp_min(1).unsqueeze(1)
    return targets, (sums / counts).to(weight.dtype)


def init_gene_embeddings(model, pieces: Mapping[int, Sequence[int]]) -> int:
    """Set each new token's embedding to the mean of its pieces' embeddings.

    The input embeddings are always set; the output embeddings (``lm_head``) too when they are not
    tied to the input ones. Works under DeepSpeed ZeRO-3 (rows are gathered, edited on rank 0 and
    re-partitioned).

    Parameters
    ----------
    model
        A causal LM whose embeddings were already resized to the new tokenizer.
    pieces
        New token id -> ids of the base tokenizer's pieces of that gene symbol.

    Returns
    -------
    int
        Number of tokens initialised.
    """
    import torch

    input_emb = model.get_input_embeddings().weight
    output_layer = model.get_output_embeddings()
    weights = [input_emb]
    if output_layer is not None and output_layer.weight is not input_emb:
        weights.append(output_layer.weight)
    n_done = 0
    with _gathered(weights) as may_modify, torch.no_grad():
        if may_modify:
            for weight in weights:
                targets, rows = mean_piece_rows(weight, pieces)
                weight[targets] = rows
                n_done = len(targets)
    logger.info("initialised %d gene token embeddings from their text pieces", n_done)
    return n_done


@contextlib.contextmanager
def _gathered(params):
    """Gather ZeRO-3 partitioned parameters for editing; yields whether this rank may modify."""
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover - old transformers
        yield True
        return
    if not is_deepspeed_zero3_enabled():
        yield True
        return
    import deepspeed
    import torch.distributed as dist

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        yield (not dist.is_initialized()) or dist.get_rank() == 0
