"""The constrained policy of RL: the cell grammar applied inside the policy.

With ``constrain_cells`` the policy RL optimises is the *constrained* distribution

    pi_c(a | s) = softmax(mask_s(logits(s)) / T)[a],

where ``mask_s`` is the single-cell answer grammar of
:class:`~cellrlhf.cell2text.sentence_constraints.CellSentenceConstraint`
(``single_cell_answer=True``): the answer opens with ``<cell>``; inside it only the measured
genes not yet written in that cell, ``</cell>`` (after the first gene) and one separator; after
its ``</cell>`` only the end-of-turn token (the tokenizer's eos, where the trainers stop); and
the cell is closed when only ``</cell>`` and the end token still fit the answer budget. Every
answer is then exactly one fully valid cell (a cell longer than the budget keeps its
highest-ranked genes, and the budget-hit metric counts it). The same mask is applied

- when sampling (the constraint as a ``logits_processor`` of ``generate``, see
  :func:`constrained_generation`), and
- when the trainer recomputes per-token log-probabilities of the completions for the policy
  (loss), the old policy (importance ratio) and the reference model (KL): the model is wrapped
  in :class:`ConstrainedLM`, whose logits are masked for every position at once
  (:meth:`~cellrlhf.cell2text.sentence_constraints.CellSentenceConstraint.banned_after`).

So ratios, KL and gradients are those of ``pi_c``; banned tokens get no gradient. Banned logits
are set to a large *finite* negative value (:func:`masked_logits`) rather than ``-inf``: their
probability is exactly 0 after the softmax, and entropies (``p log p``) stay finite where
``-inf`` would give ``0 * -inf = NaN``.

The saved policy is a plain language model; ``constrain_cells`` is recorded in its
``cellrlhf.json`` and ``cellrlhf evaluate`` / ``predict`` sample it under the same grammar by
default (``chat --constrain-cells`` applies the cell rules, not the single-answer rule).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

__all__ = [
    "BANNED_LOGIT_SCALE",
    "ConstrainedLM",
    "constrained_generation",
    "masked_logits",
    "policy_cell_constraint",
]

BANNED_LOGIT_SCALE = 2.0**-10
"""Banned logits become ``finfo(dtype).min * BANNED_LOGIT_SCALE``: finite after division by any
temperature above ``2**-10``, and ``exp`` of it is exactly 0."""


def policy_cell_constraint(
    tokenizer, genes, *, single_cell_answer: bool = True, max_answer_tokens: int | None = None
):
    """The :class:`~cellrlhf.cell2text.sentence_constraints.CellSentenceConstraint` of a policy.

    Parameters
    ----------
    tokenizer
        The policy's tokenizer (one token per gene).
    genes
        The measured genes (the data set's :class:`~cellrlhf.cell2text.vocab.GeneVocab`).
    single_cell_answer
        The answer is one cell then the tokenizer's eos (RL answers); ``False``: the cell rules
        only.
    max_answer_tokens
        The answer budget (``max_completion_length``): the cell is closed in time for
        ``</cell>`` and the end token to fit, so no answer is cut open by the budget.

    Raises
    ------
    ValueError
        For a tokenizer without gene tokens (``genes_as_text``), with the fix.
    """
    from cellrlhf.cell2text.sentence_constraints import CellSentenceConstraint

    try:
        return CellSentenceConstraint(
            tokenizer,
            genes,
            single_cell_answer=single_cell_answer,
            max_answer_tokens=max_answer_tokens,
        )
    except ValueError as err:
        raise ValueError(
            f"constrain_cells=true cannot be applied to this policy: {err} "
            "Set constrain_cells: false to train the unconstrained policy."
        ) from None


def masked_logits(constraint, input_ids, logits):
    """``logits`` with the tokens banned by the cell grammar set to a large negative value.

    Parameters
    ----------
    constraint
        A :class:`~cellrlhf.cell2text.sentence_constraints.CellSentenceConstraint`.
    input_ids
        ``(batch, length)`` ids the logits were computed from.
    logits
        ``(batch, n, vocab)``: the logits of the *last* ``n`` positions of ``input_ids`` (all of
        them, or fewer with ``logits_to_keep``); position ``t`` predicts token ``t + 1``.

    Returns
    -------
    torch.Tensor
        Same shape; ``float16`` logits are returned as ``float32`` (its range is too short for
        a banned value far below every allowed logit).
    """
    import torch

    batch, n, n_vocab = logits.shape
    if input_ids.shape[0] != batch or input_ids.shape[1] < n:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} do not belong to input_ids of shape "
            f"{tuple(input_ids.shape)}."
        )
    if logits.dtype == torch.float16:
        logits = logits.float()
    banned = constraint.banned_after(input_ids, n_vocab, n)
    floor = torch.finfo(logits.dtype).min * BANNED_LOGIT_SCALE
    return logits.masked_fill(banned, floor)


class ConstrainedLM:
    """A causal LM whose forward returns the cell grammar's masked logits.

    Stands in for the model where a trainer only calls it (``model(**inputs).logits``), e.g.
    TRL's ``_get_per_token_logps_and_entropies``; gradients flow to the allowed logits.

    Parameters
    ----------
    model
        The (possibly wrapped: DDP, DeepSpeed, PEFT) model.
    constraint
        The policy's :class:`~cellrlhf.cell2text.sentence_constraints.CellSentenceConstraint`.
    """

    def __init__(self, model, constraint) -> None:
        self.model = model
        self.constraint = constraint

    def __call__(self, *args, **kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise ValueError("ConstrainedLM needs input_ids (the mask is read from them).")
        outputs = self.model(*args, **kwargs)
        outputs.logits = masked_logits(self.constraint, input_ids, outputs.logits)
        return outputs

    def __getattr__(self, name):
        return getattr(self.model, name)


@contextmanager
def constrained_generation(model, processors):
    """Within the block, ``model.generate`` applies ``processors`` (a ``LogitsProcessorList``).

    For trainers that call ``generate`` themselves with no way to pass a ``logits_processor``:
    the instance's ``generate`` is replaced for the duration of the block and restored after.
    Custom processors run before temperature and top-k / top-p in ``transformers``, so samples
    follow ``softmax(mask(logits) / T)``, the distribution :class:`ConstrainedLM` scores.
    """
    if "generate" in vars(model):
        raise RuntimeError("model.generate is already overridden (nested constrained_generation).")
    model.generate = functools.partial(model.generate, logits_processor=processors)
    try:
        yield model
    finally:
        del model.generate
