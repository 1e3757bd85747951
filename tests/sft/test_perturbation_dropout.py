"""Perturbation dropout swaps targets for <unk_pert> in training prompts, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest

from cellrlhf.cell2text.markup import format_perturbation
from cellrlhf.cell2text.tokenizer import build_cell_tokenizer
from cellrlhf.sft.perturbation_dropout import (
    PerturbationDropout,
    PerturbationDropoutCallback,
    PerturbationDropoutCollator,
)

GENES = ["KLF1", "CEBPA", "GATA1", "HBB", "MYC"]
PROMPT = "Predict a K562 cell after {pert}. Control: <cell> HBB MYC </cell>"


@pytest.fixture(scope="module")
def tokenizer():
    return build_cell_tokenizer(GENES, texts=["Predict a K562 cell after activating. Control:"])


def _ids(tokenizer, targets, **kw):
    text = PROMPT.format(pert=format_perturbation(targets, **kw))
    return tokenizer.encode(text, add_special_tokens=False)


def test_dropped_prompt_equals_the_prompt_written_with_unk_pert(tokenizer):
    dropout = PerturbationDropout(tokenizer, probability=0.999, seed=0)
    dropout.check_round_trip(["KLF1", "CEBPA"])
    ids, labels = dropout.apply(_ids(tokenizer, ["KLF1", "CEBPA"]), [-100] * 40)
    assert ids == _ids(tokenizer, ["KLF1", "CEBPA"], known=set())  # both targets -> <unk_pert>
    assert labels is not None and all(x == -100 for x in labels[: len(ids)])


def test_probability_zero_and_control_are_untouched(tokenizer):
    never = PerturbationDropout(tokenizer, probability=0.0, seed=0)
    ids = _ids(tokenizer, ["KLF1"])
    assert never.apply(ids)[0] == ids
    always = PerturbationDropout(tokenizer, probability=0.999, seed=0)
    control = _ids(tokenizer, [], control=True)
    assert always.apply(control)[0] == control


def test_rate_is_the_probability_and_epochs_draw_afresh(tokenizer):
    dropout = PerturbationDropout(tokenizer, probability=0.3, seed=1)
    unk = tokenizer.convert_tokens_to_ids("<unk_pert>")
    prompts = [_ids(tokenizer, [g, h]) for g in GENES for h in GENES if g != h]
    rates, draws = [], []
    for epoch in range(6):
        dropout.epoch = epoch
        out = [dropout.apply(p)[0] for p in prompts]
        rates.append(np.mean([o.count(unk) / 2 for o in out]))
        draws.append(out)
    assert abs(np.mean(rates) - 0.3) < 0.06
    assert draws[0] != draws[1]  # a new epoch, new draws
    dropout.epoch = 0
    assert [dropout.apply(p)[0] for p in prompts] == draws[0]  # same epoch, same draws (resume)


def test_answers_are_never_dropped(tokenizer):
    """A supervised <pert> span (the targets the model must name) stays as written."""
    dropout = PerturbationDropout(tokenizer, probability=0.999, seed=0)
    ids = _ids(tokenizer, ["KLF1"])
    assert dropout.apply(ids, list(ids)) == (ids, ids)
    prompt_then_answer = ids + _ids(tokenizer, ["CEBPA"])
    labels = [-100] * len(ids) + prompt_then_answer[len(ids) :]
    new, new_labels = dropout.apply(prompt_then_answer, labels)
    expected_prompt = _ids(tokenizer, ["KLF1"], known=set())
    assert new == expected_prompt + prompt_then_answer[len(ids) :]
    assert new_labels == [-100] * len(expected_prompt) + prompt_then_answer[len(ids) :]


def test_collator_wraps_and_callback_sets_epoch(tokenizer):
    dropout = PerturbationDropout(tokenizer, probability=0.999, seed=0)
    seen = []
    collator = PerturbationDropoutCollator(lambda batch: seen.extend(batch) or "batch", dropout)
    ids = _ids(tokenizer, ["KLF1"])
    assert collator([{"input_ids": ids, "labels": [-100] * len(ids)}]) == "batch"
    assert seen[0]["input_ids"] == _ids(tokenizer, ["KLF1"], known=set())
    with pytest.raises(ValueError, match="packed"):
        collator([{"input_ids": ids, "seq_lengths": [len(ids)]}])

    class State:
        epoch = 2.9999999

    PerturbationDropoutCallback(dropout).on_epoch_begin(None, State(), None)
    assert dropout.epoch == 3


def test_tokenizer_without_markup_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    with pytest.raises(ValueError, match="not a single token"):
        PerturbationDropout(plain, probability=0.1, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        PerturbationDropout(plain, probability=1.0, seed=0)
