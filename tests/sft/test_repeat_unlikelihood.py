"""The unlikelihood term against repeated genes: exact values and its effect in training."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sft_helpers import train

from cellrlhf.sft.repeat_unlikelihood import repeat_unlikelihood_terms
from tests.fixtures.tiny_model import tiny_args

torch = pytest.importorskip("torch")

OPEN, CLOSE, SPACE = 1, 2, 3  # token ids of the toy vocabulary below; genes are 4 .. 9
N_VOCAB = 10


def _is_gene():
    mask = torch.zeros(N_VOCAB, dtype=torch.bool)
    mask[4:] = True
    return mask


def _reference(logits, ids, labels=None, position_ids=None):
    """Slow, obviously correct: loop over positions, collect the cell's written genes."""
    probs = torch.softmax(logits.double(), dim=-1)
    total_ul, total_mass, count = 0.0, 0.0, 0
    for b in range(ids.shape[0]):
        open_at = None
        for t in range(ids.shape[1]):
            token = int(ids[b, t])
            if position_ids is not None and int(position_ids[b, t]) == 0:
                open_at = None
            if token == OPEN:
                open_at = t
            elif token == CLOSE:
                open_at = None
            if open_at is None or t == ids.shape[1] - 1:
                continue
            if labels is not None and int(labels[b, t + 1]) == -100:
                continue
            written = {int(ids[b, j]) for j in range(open_at + 1, t + 1) if int(ids[b, j]) >= 4}
            written.discard(int(ids[b, t + 1]))
            mass = sum(float(probs[b, t, g]) for g in written)
            total_ul += -math.log1p(-min(mass, 1 - 1e-6))
            total_mass += mass
            count += 1
    return total_ul, total_mass, count


def test_exact_value_on_a_small_cell():
    # "<cell> g4 g5 g4 </cell>": predictions after <cell>, g4, g5, g4 (4 positions in a cell)
    ids = torch.tensor([[OPEN, 4, 5, 4, CLOSE, 6]])
    logits = torch.zeros(1, 6, N_VOCAB)  # uniform: every token has probability 0.1
    terms = repeat_unlikelihood_terms(
        logits, ids, is_gene=_is_gene(), cell_start_id=OPEN, cell_end_id=CLOSE
    )
    # after <cell>: nothing written (0); after g4 predicting g5: {g4} (0.1); after g5 predicting
    # g4: {g5} (g4 is the target, 0.1); after g4 (repeat) predicting </cell>: {g4, g5} (0.2);
    # after </cell>: outside a cell.
    assert terms.positions == 4
    assert float(terms.repeat_mass) == pytest.approx(0.4)
    expected = -(2 * math.log(0.9) + math.log(0.8))
    assert float(terms.unlikelihood) == pytest.approx(expected, rel=1e-6)


def test_untrained_positions_and_packed_sequence_starts_are_skipped():
    ids = torch.tensor([[OPEN, 4, 5, 6, OPEN, 7, 8]])
    labels = torch.tensor([[-100, -100, -100, 6, OPEN, 7, 8]])
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    logits = torch.randn(1, 7, N_VOCAB, generator=torch.Generator().manual_seed(0))
    for kwargs in ({"labels": labels}, {"position_ids": position_ids}, {}):
        terms = repeat_unlikelihood_terms(
            logits, ids, is_gene=_is_gene(), cell_start_id=OPEN, cell_end_id=CLOSE, **kwargs
        )
        ul, mass, count = _reference(logits, ids, **kwargs)
        assert terms.positions == count
        assert float(terms.unlikelihood) == pytest.approx(ul, rel=1e-5, abs=1e-7)
        assert float(terms.repeat_mass) == pytest.approx(mass, rel=1e-5, abs=1e-7)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.integers(0, N_VOCAB - 1), min_size=1, max_size=24), min_size=1, max_size=3
    ),
    seed=st.integers(0, 2**16),
    drop_labels=st.booleans(),
)
def test_matches_the_slow_reference(rows, seed, drop_labels):
    length = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (length - len(r)) for r in rows])
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(rows), length, N_VOCAB, generator=generator) * 3
    labels = None
    if drop_labels:
        keep = torch.rand(ids.shape, generator=generator) < 0.7
        labels = torch.where(keep, ids, torch.full_like(ids, -100))
    terms = repeat_unlikelihood_terms(
        logits, ids, is_gene=_is_gene(), cell_start_id=OPEN, cell_end_id=CLOSE, labels=labels
    )
    ul, mass, count = _reference(logits, ids, labels)
    assert terms.positions == count
    assert float(terms.unlikelihood) == pytest.approx(ul, rel=1e-4, abs=1e-6)
    assert float(terms.repeat_mass) == pytest.approx(mass, rel=1e-4, abs=1e-6)


def test_gradient_lowers_the_mass_on_written_genes():
    ids = torch.tensor([[OPEN, 4, 5, 6, CLOSE]])
    logits = torch.zeros(1, 5, N_VOCAB, requires_grad=True)
    terms = repeat_unlikelihood_terms(
        logits, ids, is_gene=_is_gene(), cell_start_id=OPEN, cell_end_id=CLOSE
    )
    terms.unlikelihood.backward()
    grad = logits.grad[0]
    # after g4 g5 (position 2, predicting g6): pushing down g4 and g5, up everything else
    assert grad[2, 4] > 0 and grad[2, 5] > 0
    assert grad[2, 6] < 0 and grad[2, CLOSE] < 0
    # after <cell> nothing is written: no gradient
    assert torch.all(grad[0] == 0)


def test_zero_weight_is_rejected_and_text_mode_refused(pretrained):
    from transformers import AutoTokenizer

    from cellrlhf.sft.repeat_unlikelihood import RepeatUnlikelihood

    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    with pytest.raises(ValueError, match="must be > 0"):
        RepeatUnlikelihood(tokenizer, ["G1"], 0.0)
    with pytest.raises(ValueError, match="repeat_unlikelihood_weight=-1"):
        from cellrlhf.sft.configs import CellSFTConfig

        CellSFTConfig(output_dir="x", repeat_unlikelihood_weight=-1.0, report_to="none")


def _teacher_forced_repeat_mass(model_dir, data_dir) -> float:
    """Mean probability on already-written genes over the tiny corpus' cells."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cellrlhf.data.layout import open_dataset_dir
    from cellrlhf.sft.repeat_unlikelihood import RepeatUnlikelihood

    dataset = open_dataset_dir(data_dir)
    texts = list(dataset.load_pretrain()["text"])[:32]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    term = RepeatUnlikelihood(tokenizer, dataset.vocab(), 1.0)
    mass, positions = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
            terms = term.terms(model(input_ids=ids).logits, ids)
            mass, positions = mass + float(terms.repeat_mass), positions + terms.positions
    return mass / positions


def test_training_with_the_term_logs_it_and_lowers_repeat_mass(pretrained, tiny_data, tmp_path):
    """Same SFT run with and without the term: it is logged, and the model repeats less."""
    history = {}
    for weight in (0.0, 3.0):
        out = tmp_path / f"w{weight}"
        argv = tiny_args(
            "pretrain",
            tiny_data,
            out,
            "--model_config",
            "none",
            "--model_name_or_path",
            str(pretrained),
            "--max_steps",
            "20",
            "--eval_holdout_fraction",
            "0.25",
            "--eval_generation_samples",
            "0",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "20",
            "--repeat_unlikelihood_weight",
            str(weight),
        )
        train("pretrain", argv)
        history[weight] = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert not any("repeat_mass" in h for h in history[0.0])
    logged = [h["repeat_mass"] for h in history[3.0] if "repeat_mass" in h]
    assert logged and all(0.0 <= m <= 1.0 for m in logged)
    evaluated = [h for h in history[3.0] if "eval_repeat_mass" in h]
    assert evaluated, "the evaluation logs the teacher-forced repeat mass too"
    # eval_loss stays plain cross-entropy (the term is not added at evaluation)
    for h in evaluated:
        assert h["eval_perplexity"] == pytest.approx(math.exp(h["eval_loss"]), rel=1e-4)
    without = _teacher_forced_repeat_mass(tmp_path / "w0.0", tiny_data)
    with_term = _teacher_forced_repeat_mass(tmp_path / "w3.0", tiny_data)
    assert with_term < 0.8 * without, (with_term, without)
