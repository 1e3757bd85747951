"""Perturbation dropout: hide perturbation targets behind ``<unk_pert>`` during training.

With probability ``p`` each target gene written inside ``<pert> ... </pert>`` in a training prompt
is replaced by ``<unk_pert>``, so the model learns what to answer for targets it has no knowledge
of (unseen perturbations are written with ``<unk_pert>`` at inference).

The replacement happens on token ids in the collator, after TRL's tokenisation: the text between
the markers is decoded, the chosen targets are swapped, and the span is re-encoded (markers are
special tokens, so the span is tokenised on its own in every tokenizer mode). Which targets are
dropped is a pure function of ``(seed, epoch, token ids)``: runs are reproducible, resumed runs
drop the same targets as unbroken ones, and every epoch draws afresh.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Callable, Sequence

import numpy as np
from transformers import TrainerCallback

from cellrlhf.cell2text.markup import CONTROL_PERT, PERT_END, PERT_START, UNK_PERT
from cellrlhf.cell2text.tokenizer import markup_token_id

__all__ = ["PerturbationDropout", "PerturbationDropoutCollator", "PerturbationDropoutCallback"]

logger = logging.getLogger(__name__)

_WORD = re.compile(r"\S+")
_IGNORE = -100


class PerturbationDropout:
    """Token-level perturbation-target dropout for one tokenizer.

    Parameters
    ----------
    tokenizer
        The training tokenizer; ``<pert>``, ``</pert>`` and ``<unk_pert>`` must be single tokens.
    probability
        Chance that each target is replaced, in ``[0, 1)``.
    seed
        Base seed (the training seed).
    """

    def __init__(self, tokenizer, *, probability: float, seed: int) -> None:
        if not 0.0 <= probability < 1.0:
            raise ValueError(f"perturbation dropout probability {probability} must be in [0, 1).")
        self.tokenizer = tokenizer
        self.probability = float(probability)
        self.seed = int(seed)
        self.epoch = 0
        self._start = markup_token_id(tokenizer, PERT_START, needed_by="perturbation dropout")
        self._end = markup_token_id(tokenizer, PERT_END, needed_by="perturbation dropout")
        self._unk = markup_token_id(tokenizer, UNK_PERT, needed_by="perturbation dropout")
        self._keep = {t.lower() for t in (UNK_PERT, CONTROL_PERT, PERT_START, PERT_END)}

    def check_round_trip(self, targets: Sequence[str]) -> None:
        """Raise when a ``<pert>`` span of ``targets`` does not survive decode -> encode unchanged."""
        ids = self.tokenizer.encode(
            f"{PERT_START} {' '.join(targets)} {PERT_END}", add_special_tokens=False
        )
        spans = list(self._spans(ids))
        if not spans:
            raise ValueError("the tokenizer does not keep <pert> / </pert> as single tokens.")
        start, end = spans[0]
        span = ids[start : end + 1]
        if self._encode(self._decode(span)) != span:
            raise ValueError(
                "perturbation dropout needs a <pert> ... </pert> span to round-trip through "
                f"decode/encode; this tokenizer turns {span} into {self._encode(self._decode(span))}. "
                "Set perturbation_dropout: 0 or use a tokenizer built by cellrlhf."
            )

    def apply(self, input_ids: Sequence[int], labels: Sequence[int] | None = None):
        """Return ``(input_ids, labels)`` with some targets replaced (new lists; inputs untouched).

        Only prompt spans are edited: a ``<pert>`` span with any supervised label (an answer, such
        as the targets the model must name) is left as it is. Without ``labels`` every span
        counts as prompt.
        """
        ids = list(input_ids)
        labs = list(labels) if labels is not None else None
        spans = list(self._spans(ids))
        if not spans or self.probability == 0.0:
            return ids, labs
        rng = np.random.default_rng(
            [self.seed, self.epoch, zlib.crc32(np.asarray(ids, np.int64).tobytes())]
        )
        # right to left, so earlier spans keep their positions
        for start, end in reversed(spans):
            draws = rng.random(
                end - start + 1
            )  # drawn for every span: edits never shift the stream
            if labs is not None and any(x != _IGNORE for x in labs[start : end + 1]):
                continue
            # the span with its markers decodes to exactly its text (spaces after markers kept)
            text = self._decode(ids[start : end + 1])
            words = _WORD.findall(text)
            drop = draws[: len(words)] < self.probability
            if not any(d and w.lower() not in self._keep for d, w in zip(drop, words, strict=True)):
                continue
            it = iter(drop)

            def swap(match: re.Match, it=it) -> str:
                word = match.group(0)
                return UNK_PERT if next(it) and word.lower() not in self._keep else word

            new_span = self._encode(_WORD.sub(swap, text))
            ids[start : end + 1] = new_span
            if labs is not None:
                labs[start : end + 1] = [_IGNORE] * len(new_span)
        return ids, labs

    def _spans(self, ids: Sequence[int]):
        start = None
        for pos, tok in enumerate(ids):
            if tok == self._start:
                start = pos
            elif tok == self._end and start is not None:
                yield start, pos
                start = None

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))


class PerturbationDropoutCollator:
    """Wrap a collator: apply :class:`PerturbationDropout` to each example, then collate."""

    def __init__(self, collator: Callable, dropout: PerturbationDropout) -> None:
        self.collator = collator
        self.dropout = dropout

    def __call__(self, examples: list[dict]) -> dict:
        out = []
        for example in examples:
            if "seq_lengths" in example:
                raise ValueError(
                    "perturbation dropout cannot edit packed sequences; set packing: false for SFT or "
                    "perturbation_dropout: 0."
                )
            ids, labels = self.dropout.apply(example["input_ids"], example.get("labels"))
            new = dict(example)
            new["input_ids"] = ids
            if labels is not None:
                new["labels"] = labels
            out.append(new)
        return self.collator(out)


class PerturbationDropoutCallback(TrainerCallback):
    """Tell the dropout which epoch is starting (fresh draws each epoch, same draws on resume)."""

    def __init__(self, dropout: PerturbationDropout) -> None:
        self.dropout = dropout

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dropout.epoch = int(math.floor((state.epoch or 0.0) + 1e-6))
