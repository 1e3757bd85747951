"""The constrained policy: TRL's per-token log-probabilities are those of the masked logits, and
sampling under the same mask gives only valid cells."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from cellrlhf.cell2text.markup import extract_cell
from cellrlhf.cell2text.sentence_constraints import CellSentenceConstraint
from cellrlhf.cell2text.tokenizer import build_cell_tokenizer
from cellrlhf.cell2text.vocab import GeneVocab
from cellrlhf.ppo.constrained_policy import (
    ConstrainedLM,
    constrained_generation,
    masked_logits,
    policy_cell_constraint,
)
from cellrlhf.ppo.grpo_trainer import CellGRPOTrainer
from tests.fixtures.tiny_model import random_llama

GENES = ("CD3E", "CD8A", "MS4A1", "NKG7", "GNLY", "LYZ")
TEXTS = ["Generate a cell of type T cell.", "What type of cell is this?"] * 5
TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def tok():
    return build_cell_tokenizer(GeneVocab(GENES), texts=TEXTS)


@pytest.fixture(scope="module")
def constraint(tok):
    return CellSentenceConstraint(tok, GeneVocab(GENES))


@pytest.fixture(scope="module")
def model(tok):
    return random_llama(tok).eval()


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _bare_trainer(model, constraint) -> CellGRPOTrainer:
    """A trainer with only what TRL's log-probability method reads (no data, no optimiser)."""
    trainer = CellGRPOTrainer.__new__(CellGRPOTrainer)
    trainer.cell_constraint = constraint
    trainer.temperature = TEMPERATURE
    trainer.model_kwarg_keys = set(inspect.signature(model.forward).parameters)
    trainer._entropy_bonus_enabled = False
    return trainer


def _prompt_and_completion(tok):
    """Two rows: a repeated-gene-prone cell, and a closed cell followed by text."""
    rows = [
        (_ids(tok, "Generate a cell of type T cell."), _ids(tok, "<cell> CD3E CD8A CD3E </cell>")),
        (_ids(tok, "What type"), _ids(tok, "<cell> NKG7 </cell> T cell")),
    ]
    width_p = max(len(p) for p, _ in rows)
    width_c = max(len(c) for _, c in rows)
    pad = tok.pad_token_id
    ids = [[pad] * (width_p - len(p)) + p + c + [pad] * (width_c - len(c)) for p, c in rows]
    mask = [[0] * (width_p - len(p)) + [1] * (len(p) + len(c)) + [0] * (width_c - len(c))
            for p, c in rows]  # fmt: skip
    return torch.tensor(ids), torch.tensor(mask), width_c


def test_trl_logps_are_the_masked_distribution(tok, constraint, model):
    ids, mask, k = _prompt_and_completion(tok)
    with torch.no_grad():
        got, entropy, _ = _bare_trainer(model, constraint)._get_per_token_logps_and_entropies(
            model, ids, mask, k, compute_entropy=True
        )
        free, _, _ = _bare_trainer(model, None)._get_per_token_logps_and_entropies(
            model, ids, mask, k
        )
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][:, -k:] / TEMPERATURE
    banned = constraint.banned_after(ids[:, :-1], logits.shape[-1], k)
    direct = torch.log_softmax(logits.masked_fill(banned, -math.inf), dim=-1)
    target = ids[:, -k:]
    expected = direct.gather(-1, target[..., None])[..., 0]
    real = mask[:, -k:].bool()
    target_banned = banned.gather(-1, target[..., None])[..., 0]
    scored = real & ~target_banned
    assert scored.sum() == real.sum() - 1  # one banned token: the repeated gene
    torch.testing.assert_close(got[scored], expected[scored])
    assert torch.isfinite(entropy).all() and torch.isfinite(got).all()

    # row 0 writes CD3E a second time: banned, so its constrained log-prob is ~ -inf
    cd3e = tok.convert_tokens_to_ids("\u2581CD3E")
    repeat = [j for j in range(k) if target[0, j] == cd3e][1]
    assert got[0, repeat] < -1e30 and free[0, repeat] > -30
    # inside the cell, allowed tokens gain the mass of the banned ones; outside, nothing changes
    inside = banned[0].any(dim=-1) & real[0]
    inside[repeat] = False
    assert inside.sum() >= 3 and (got[0, inside] > free[0, inside] + 1e-4).all()
    outside = ~banned[1].any(dim=-1) & real[1]
    torch.testing.assert_close(got[1, outside], free[1, outside])
    close = (target[1] == constraint.cell_end_id).nonzero().item()
    assert banned[1, close].any() and not banned[1, close + 1 :].any()  # text after </cell>


def test_masked_logits_carry_gradients_to_allowed_tokens_only(tok, constraint, model):
    ids, mask, k = _prompt_and_completion(tok)
    logits = model(input_ids=ids, attention_mask=mask).logits.detach().requires_grad_(True)
    out = masked_logits(constraint, ids, logits)
    out.log_softmax(-1).sum().backward()
    banned = constraint.banned_after(ids, logits.shape[-1])
    assert banned.any() and (logits.grad[banned] == 0).all()
    assert (logits.grad[~banned] != 0).any()
    with pytest.raises(ValueError, match="do not belong"):
        masked_logits(constraint, ids[:, :3], logits)


def test_constrained_sampling_gives_only_valid_cells_scored_as_sampled(tok, constraint, model):
    from transformers import LogitsProcessorList

    prompts = ["Generate a cell of type T cell. <cell>"] * 24
    enc = tok(prompts, return_tensors="pt", add_special_tokens=False)
    settings = dict(max_new_tokens=20, do_sample=True, top_k=0, top_p=1.0, temperature=TEMPERATURE,
                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    torch.manual_seed(3)
    free = model.generate(**enc, **settings)
    with constrained_generation(model, LogitsProcessorList([constraint])) as m:
        torch.manual_seed(3)
        out = m.generate(**enc, **settings)
    assert "generate" not in vars(model)  # restored

    def cell_ok(row):
        text = tok.decode(row, skip_special_tokens=False)
        cell = extract_cell(text[text.index("<cell>") :])  # the prompt's cell
        words = cell.sentence.split()
        return cell.closed and words and len(set(words)) == len(words) and set(words) <= set(GENES)

    assert sum(cell_ok(r) for r in free.tolist()) < len(prompts)  # the random model is invalid
    assert all(cell_ok(r) for r in out.tolist())
    # every sampled token is allowed by the mask the trainer scores with
    scored = ConstrainedLM(model, constraint)(input_ids=out).logits[:, :-1]
    k = out.shape[1] - enc["input_ids"].shape[1]
    logp = scored[:, -k:].log_softmax(-1).gather(-1, out[:, -k:, None])[..., 0]
    assert (logp > -1e3).all()


def test_a_policy_without_gene_tokens_is_refused():
    from cellrlhf.cell2text.tokenizer import genes_as_text_tokenizer
    from tests.cell2text.test_tokenizer import _byte_level_base

    text_mode = genes_as_text_tokenizer(_byte_level_base(), add_markup_tokens=True)
    with pytest.raises(ValueError, match="constrain_cells: false"):
        policy_cell_constraint(text_mode, GENES)


# ---------------------------------------------------------------------------- single-cell answers
def _chat_prompt(tok, user: str) -> list[int]:
    conversation = [{"role": "user", "content": user}]
    text = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return tok.encode(text, add_special_tokens=False)


def test_the_policy_constraint_is_the_single_cell_answer_grammar(tok):
    constraint = policy_cell_constraint(tok, GENES)
    assert constraint.single_cell_answer and constraint.end_ids == [tok.eos_token_id]


def test_trl_logps_of_single_cell_answers_are_the_masked_distribution(tok, model):
    """Chat prompts, the RL grammar: TRL's log-probs equal log_softmax of the masked logits, and
    differ from the unmasked ones; text after the cell is banned (about -inf)."""
    answer = policy_cell_constraint(tok, GENES)
    rows = [
        (_chat_prompt(tok, "Generate a cell of type T cell."), _ids(tok, "<cell> CD3E CD8A </cell>") + [tok.eos_token_id]),
        (_chat_prompt(tok, "What type"), _ids(tok, "<cell> NKG7 </cell> T cell")),
    ]  # fmt: skip
    width_p, width_c = max(len(p) for p, _ in rows), max(len(c) for _, c in rows)
    pad = tok.pad_token_id
    ids = torch.tensor(
        [[pad] * (width_p - len(p)) + p + c + [pad] * (width_c - len(c)) for p, c in rows]
    )
    mask = torch.tensor([[0] * (width_p - len(p)) + [1] * (len(p) + len(c)) + [0] * (width_c - len(c))
                         for p, c in rows])  # fmt: skip
    k = width_c
    with torch.no_grad():
        got, entropy, _ = _bare_trainer(model, answer)._get_per_token_logps_and_entropies(
            model, ids, mask, k, compute_entropy=True
        )
        free, _, _ = _bare_trainer(model, None)._get_per_token_logps_and_entropies(
            model, ids, mask, k
        )
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][:, -k:] / TEMPERATURE
    banned = answer.banned_after(ids[:, :-1], logits.shape[-1], k)
    expected = torch.log_softmax(logits.masked_fill(banned, -math.inf), dim=-1)
    expected = expected.gather(-1, ids[:, -k:, None])[..., 0]
    real = mask[:, -k:].bool()
    target_banned = banned.gather(-1, ids[:, -k:, None])[..., 0]
    assert torch.isfinite(entropy).all() and torch.isfinite(got).all()
    torch.testing.assert_close(got[real & ~target_banned], expected[real & ~target_banned])
    # row 0 is one valid cell and eos: every token allowed, <cell> and eos forced (log-prob 0)
    assert not target_banned[0][real[0]].any()
    assert got[0, 0] == 0 and got[0, real[0].sum() - 1] == 0
    assert (got[0][real[0]] > free[0][real[0]] + 1e-4).all()  # each token gains the banned mass
    # row 1 writes text after </cell>: banned in the answer grammar, allowed in the cell grammar
    assert target_banned[1][real[1]].sum() == real[1].sum() - 4  # after "<cell> NKG7 ▁ </cell>"
    assert (got[1][real[1] & target_banned[1]] < -1e30).all()
    assert (free[1][real[1] & target_banned[1]] > -30).all()


def test_single_cell_answer_sampling_is_fully_valid_and_scored_as_sampled(tok, model):
    """Sampling under the RL grammar (as the trainer does): 100 % fully valid answers (closed,
    non-empty, no unknown or repeated gene, ended, nothing after the cell); every sampled token
    has a finite log-prob under the masked logits the trainer scores with."""
    from transformers import LogitsProcessorList

    from cellrlhf.cell2text.decoder import ExpressionDecoder
    from cellrlhf.ppo.sample_checks import fully_valid_cells
    from cellrlhf.sampling import answer_text

    answer = policy_cell_constraint(tok, GENES)
    prompt = _chat_prompt(tok, "Generate a cell of type T cell.")
    enc = {"input_ids": torch.tensor([prompt] * 48)}
    enc["attention_mask"] = torch.ones_like(enc["input_ids"])
    settings = dict(max_new_tokens=3 + 2 * len(GENES) + 1, do_sample=True, top_k=0, top_p=1.0,
                    temperature=TEMPERATURE, pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id)  # fmt: skip
    decoder = ExpressionDecoder(GeneVocab(GENES), intercept=2.0, slope=-1.0)

    def validity(out):
        new = out[:, len(prompt) :].tolist()
        texts = [answer_text(tok, row, [tok.eos_token_id]) for row in new]
        ended = [tok.eos_token_id in row for row in new]
        return fully_valid_cells(decoder.decode(texts)[1], texts, ended)

    torch.manual_seed(5)
    with constrained_generation(model, LogitsProcessorList([policy_cell_constraint(tok, GENES, single_cell_answer=False)])) as m:  # fmt: skip
        cells_only = m.generate(**enc, **settings)
    assert validity(cells_only).mean() < 1.0  # the cell rules alone let the model write on
    torch.manual_seed(5)
    with constrained_generation(model, LogitsProcessorList([answer])) as m:
        out = m.generate(**enc, **settings)
    assert validity(out).all()
    scored = ConstrainedLM(model, answer)(input_ids=out).logits[:, :-1]
    k = out.shape[1] - len(prompt)
    logp = scored[:, -k:].log_softmax(-1).gather(-1, out[:, -k:, None])[..., 0]
    real = torch.ones_like(logp, dtype=torch.bool)
    for r, row in enumerate(out[:, len(prompt) :].tolist()):
        if tok.eos_token_id in row:
            real[r, row.index(tok.eos_token_id) + 1 :] = False  # padding after the end
    assert (logp[real] > -1e3).all()


def test_ppo_rollout_reference_and_update_logps_are_the_masked_distribution(tok, model):
    """CellPPOTrainer's patched TRL helpers: the rollout log-probs (from generate's scores), the
    reference's and the update's (from forward) are one and the same constrained distribution,
    which differs from the unmasked one; every sampled answer is one valid cell and eos."""
    from transformers import GenerationConfig
    from trl.experimental.ppo import ppo_trainer as trl_ppo
    from trl.trainer.utils import selective_log_softmax

    from cellrlhf.ppo.phase_timing import PhaseTimer
    from cellrlhf.ppo.ppo_trainer import CellPPOTrainer

    budget = 12
    trainer = CellPPOTrainer.__new__(CellPPOTrainer)
    trainer.phase_timer, trainer.reward_model = PhaseTimer(), None
    trainer.cell_constraint = policy_cell_constraint(tok, GENES, max_answer_tokens=budget)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    prompts = [_chat_prompt(tok, "Generate a cell of type T cell."), _chat_prompt(tok, "A cell")]
    width = max(len(p) for p in prompts)
    queries = torch.tensor([[pad] * (width - len(p)) + p for p in prompts for _ in range(8)])
    config = GenerationConfig(max_new_tokens=budget, temperature=TEMPERATURE + 1e-7, top_k=0,
                              top_p=1.0, do_sample=True, eos_token_id=eos, pad_token_id=pad)  # fmt: skip
    torch.manual_seed(0)
    with torch.no_grad(), trainer._timed_phases():
        query_responses, scores = trl_ppo.batch_generation(model, queries, 8, pad, config)
        reference = trl_ppo.forward(model, query_responses, pad)
        update, _ = trl_ppo.forward(lambda **kw: (model(**kw), None), query_responses, pad)
    with torch.no_grad():
        free = trl_ppo.forward(model, query_responses, pad)  # unpatched again: unmasked
    response = query_responses[:, width:]
    rollout = selective_log_softmax(scores, response)
    real = torch.ones_like(response, dtype=torch.bool)  # up to and including the first eos
    for r, row in enumerate(response.tolist()):
        text = tok.decode(row[: row.index(eos)], skip_special_tokens=False)
        cell = extract_cell(text)
        words = cell.sentence.split()
        assert text.startswith("<cell>") and text.endswith("</cell>") and cell.closed, text
        assert words and len(set(words)) == len(words) and set(words) <= set(GENES), text
        real[r, row.index(eos) + 1 :] = False
    for output in (reference, update):
        logits = output.logits[:, width - 1 : -1] / (TEMPERATURE + 1e-7)
        torch.testing.assert_close(
            selective_log_softmax(logits, response)[real], rollout[real], rtol=1e-4, atol=1e-4
        )
    unmasked = selective_log_softmax(
        free.logits[:, width - 1 : -1] / (TEMPERATURE + 1e-7), response
    )
    assert (unmasked[real] < rollout[real] - 1e-4).float().mean() > 0.5
