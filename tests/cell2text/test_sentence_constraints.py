"""Constrained cell-sentence decoding: exact masks, batches, left padding, generation, properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cellrlhf.cell2text.markup import extract_cell
from cellrlhf.cell2text.sentence_constraints import (
    CellSentenceConstraint,
    cell_sentence_processors,
)
from cellrlhf.cell2text.tokenizer import build_cell_tokenizer, genes_as_text_tokenizer
from cellrlhf.cell2text.vocab import GeneVocab

GENES = ("CD3E", "CD8A", "MS4A1", "NKG7", "GNLY", "LYZ")
TARGETS = ("SPI1",)  # a perturbation target: a token, but not a measured gene
TEXTS = ["What type of cell is this?", "Generate a cell of type T cell."] * 5


@pytest.fixture(scope="module")
def tok():
    return build_cell_tokenizer(GeneVocab(GENES), extra_genes=TARGETS, texts=TEXTS)


@pytest.fixture(scope="module")
def constraint(tok):
    return CellSentenceConstraint(tok, GeneVocab(GENES))


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _id(tok, token: str) -> int:
    return tok.convert_tokens_to_ids(token)


def _batch(tok, rows: list[list[int]]) -> torch.Tensor:
    """Left-padded batch, as ``generate`` sees it."""
    width = max(len(r) for r in rows)
    return torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])


def _reference_banned(tok, constraint, row: list[int], n_vocab: int) -> set[int]:
    """The documented rule, written as a plain left-to-right scan."""
    open_, used = False, set()
    for token in row:
        if token == constraint.cell_start_id:
            open_, used = True, set()
        elif token == constraint.cell_end_id:
            open_ = False
        elif open_ and token in constraint.gene_ids:
            used.add(token)
    if not open_:
        return set()
    allowed = set(constraint.gene_ids) - used
    if used:  # a cell closes only after its first gene
        allowed.add(constraint.cell_end_id)
    if row[-1] not in constraint.space_ids:
        allowed |= set(constraint.space_ids)
    return set(range(n_vocab)) - allowed


def test_token_sets(tok, constraint):
    assert constraint.gene_ids == sorted(_id(tok, "\u2581" + g) for g in GENES)
    assert _id(tok, "\u2581SPI1") not in constraint.gene_ids  # target, not a measured gene
    assert _id(tok, "\u2581") in constraint.space_ids
    assert _id(tok, "<0x0A>") in constraint.space_ids  # newline byte
    assert not set(constraint.space_ids) & set(constraint.gene_ids)
    assert _id(tok, "<cell>") == constraint.cell_start_id
    assert _id(tok, "</cell>") == constraint.cell_end_id


def test_exact_masks_on_a_left_padded_batch(tok, constraint):
    rows = [
        _ids(tok, "What is <cell> CD3E CD8A </cell> this?"),  # closed: untouched
        _ids(tok, "Generate <cell> CD3E NKG7"),  # open, CD3E and NKG7 used
        _ids(tok, "<cell> LYZ") + [_id(tok, "\u2581")],  # open, after a separator
        _ids(tok, "<cell> CD3E </cell> again <cell>"),  # a new cell: nothing used yet
        _ids(tok, "plain text"),  # never a cell
    ]
    input_ids = _batch(tok, rows)
    n_vocab = len(tok) + 7  # models often pad their embedding matrix
    scores = torch.randn(len(rows), n_vocab, generator=torch.Generator().manual_seed(0))
    out = constraint(input_ids, scores.clone())

    gene = {g: _id(tok, "\u2581" + g) for g in GENES}
    space, end = _id(tok, "\u2581"), _id(tok, "</cell>")
    allowed = [
        set(range(n_vocab)),
        {gene[g] for g in GENES if g not in ("CD3E", "NKG7")} | {end, *constraint.space_ids},
        set(gene.values()) - {gene["LYZ"]} | {end},
        set(gene.values()) | set(constraint.space_ids),  # no empty cell: </cell> not yet
        set(range(n_vocab)),
    ]
    for r, keep in enumerate(allowed):
        drop = sorted(set(range(n_vocab)) - keep)
        expected = scores[r].clone()
        expected[drop] = -math.inf
        assert torch.equal(out[r], expected), r
    assert space in allowed[1] and space not in allowed[2]
    assert _id(tok, "</s>") not in allowed[1]  # no end of turn inside an open cell
    assert torch.isfinite(out).any(dim=1).all()


def test_left_padding_and_batch_neighbours_do_not_change_a_row(tok, constraint):
    row = _ids(tok, "x <cell> GNLY MS4A1")
    alone = constraint.banned(torch.tensor([row]), len(tok))
    padded = constraint.banned(_batch(tok, [row, row + _ids(tok, " CD3E </cell> done")]), len(tok))
    assert torch.equal(alone[0], padded[0])
    assert not padded[1].any()


def test_genes_as_text_mode_is_refused(tok):
    from tests.cell2text.test_tokenizer import _byte_level_base

    text_mode = genes_as_text_tokenizer(_byte_level_base(), add_markup_tokens=True)
    with pytest.raises(ValueError, match="genes_as_text"):
        CellSentenceConstraint(text_mode, GENES)


def test_genes_without_tokens_and_mismatched_scores(tok, constraint, caplog):
    with caplog.at_level("WARNING"):
        partial = CellSentenceConstraint(tok, [*GENES, "NOTAGENE"])
    assert "NOTAGENE" in caplog.text
    assert partial.gene_ids == constraint.gene_ids
    with pytest.raises(ValueError, match="single token"):
        CellSentenceConstraint(tok, ["NOTAGENE"])
    with pytest.raises(ValueError, match="do not match"):
        constraint(torch.tensor([_ids(tok, "<cell>")]), torch.zeros(1, 10))


_ALPHABET = st.sampled_from(
    ["<cell>", "</cell>", "\u2581", "W", "<pad>", *("\u2581" + g for g in GENES)]
)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.lists(_ALPHABET, min_size=1, max_size=14), min_size=1, max_size=5))
def test_banned_matches_the_rule(tok, constraint, rows):
    id_rows = [[_id(tok, t) for t in r] for r in rows]
    input_ids = _batch(tok, id_rows)
    banned = constraint.banned(input_ids, len(tok))
    for r, row in enumerate(id_rows):
        got = set(torch.nonzero(banned[r]).ravel().tolist())
        assert got == _reference_banned(tok, constraint, row, len(tok))


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(st.lists(_ALPHABET, min_size=1, max_size=14), min_size=1, max_size=4),
    data=st.data(),
)
def test_banned_after_every_prefix_matches_the_rule(tok, constraint, rows, data):
    """The whole-sequence mask (RL log-probabilities) equals the per-step rule at every position."""
    id_rows = [[_id(tok, t) for t in r] for r in rows]
    input_ids = _batch(tok, id_rows)
    length = input_ids.shape[1]
    n = data.draw(st.integers(1, length))
    banned = constraint.banned_after(input_ids, len(tok), n)
    assert banned.shape == (len(rows), n, len(tok))
    for r in range(len(rows)):
        full = input_ids[r].tolist()
        for k, t in enumerate(range(length - n, length)):
            got = set(torch.nonzero(banned[r, k]).ravel().tolist())
            assert got == _reference_banned(tok, constraint, full[: t + 1], len(tok)), (r, t)


def test_banned_after_checks_the_window(tok, constraint):
    ids = torch.tensor([_ids(tok, "<cell> CD3E")])
    with pytest.raises(ValueError, match="n_positions"):
        constraint.banned_after(ids, len(tok), ids.shape[1] + 1)


# ---------------------------------------------------------------------------- generation
@pytest.fixture(scope="module")
def tiny_model(tok):
    from tests.fixtures.tiny_model import random_llama

    return random_llama(tok).eval()


class _Favour:
    """Stands in for a model that keeps writing one gene: adds ``bonus`` to its logit."""

    def __init__(self, token_id: int, bonus: float = 50.0):
        self.token_id, self.bonus = token_id, bonus

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.token_id] += self.bonus
        return scores


def _generate(model, tok, prompts, processors, *, seed=0, n_new=12):
    from transformers import LogitsProcessorList

    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left",
              add_special_tokens=False)  # fmt: skip
    torch.manual_seed(seed)
    out = model.generate(
        **enc,
        max_new_tokens=n_new,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        logits_processor=LogitsProcessorList(processors),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    new = out[:, enc["input_ids"].shape[1] :]
    # decode prompt and answer together: a text's first "\u2581" decodes to no space
    rows = [[i for i in r if i != tok.pad_token_id] for r in out.tolist()]
    fulls = [tok.decode(r, skip_special_tokens=False) for r in rows]
    assert all(f.startswith(p) for f, p in zip(fulls, prompts, strict=True))
    return [f[len(p) :] for f, p in zip(fulls, prompts, strict=True)], new


def _open_cell_words(prompt: str, answer: str) -> tuple[list[str], int, bool]:
    """Words of the cell open at the end of ``prompt`` as continued by ``answer``, how many of
    them the prompt wrote, and whether the answer closed it."""
    start = prompt.rindex("<cell>")
    cell = extract_cell(prompt[start:] + answer)
    return cell.sentence.split(), len(prompt[start + len("<cell>") :].split()), cell.closed


def test_generation_never_repeats_a_gene_inside_a_cell(tok, tiny_model):
    prompts = ["Generate a cell <cell>", "<cell> CD3E </cell> What type <cell> NKG7", "<cell>"] * 4
    favour_cd3e = _Favour(_id(tok, "\u2581CD3E"))
    free, _ = _generate(tiny_model, tok, prompts, [favour_cd3e])
    assert any(
        _open_cell_words(p, a)[0].count("CD3E") > 1 for p, a in zip(prompts, free, strict=True)
    )
    constraint = CellSentenceConstraint(tok, GENES)
    texts, _ = _generate(tiny_model, tok, prompts, [favour_cd3e, constraint], n_new=20)
    for prompt, answer in zip(prompts, texts, strict=True):
        words, n_prompt, closed = _open_cell_words(prompt, answer)
        assert len(set(words)) == len(words), answer
        assert set(words) <= set(GENES), answer
        assert words[n_prompt] == "CD3E" or "CD3E" in words[:n_prompt]  # favoured, once
        assert closed, answer  # 6 genes, 20 tokens: the cell must close


def test_random_model_sampling_gives_only_valid_cells(tok, tiny_model):
    prompts = ["Generate a cell of type T cell. <cell>"] * 16
    free, _ = _generate(tiny_model, tok, prompts, [], seed=1, n_new=16)
    free_words = [_open_cell_words(p, a)[0] for p, a in zip(prompts, free, strict=True)]
    assert any(not set(w) <= set(GENES) or len(set(w)) < len(w) for w in free_words)
    processors = list(cell_sentence_processors(tok, GENES))
    texts, _ = _generate(tiny_model, tok, prompts, processors, seed=1, n_new=16)
    for prompt, answer in zip(prompts, texts, strict=True):
        words, _, _ = _open_cell_words(prompt, answer)
        assert len(set(words)) == len(words) and set(words) <= set(GENES), answer


# ---------------------------------------------------------------------------- single-cell answers
@pytest.fixture(scope="module")
def answer_constraint(tok):
    return CellSentenceConstraint(tok, GeneVocab(GENES), single_cell_answer=True)


def _reference_answer_banned(
    tok, constraint, row: list[int], n_vocab: int, budget: int | None = None
) -> set[int]:
    """The single-cell answer rule as a plain scan: after the last ``<|assistant|>``, only
    ``<cell>`` until the answer opens its cell, the cell rule inside (only ``</cell>`` once the
    cell has ``budget - 2`` tokens), only eos after it."""
    marker = constraint.answer_start_id
    last = max(i for i, t in enumerate(row) if t == marker)
    answer = row[last + 1 :]
    if not answer:  # the prefix ends at the marker: only the cell rule
        return _reference_banned(tok, constraint, row, n_vocab)
    everything = set(range(n_vocab))
    if constraint.cell_start_id not in answer:
        return everything - {constraint.cell_start_id}
    if _reference_banned(tok, constraint, row, n_vocab):  # inside an open cell
        written = len(row) - max(i for i, t in enumerate(row) if t == constraint.cell_start_id)
        if budget is not None and written + 2 >= budget:
            return everything - {constraint.cell_end_id}
        return _reference_banned(tok, constraint, row, n_vocab)
    return everything - {tok.eos_token_id}


_ANSWER_ALPHABET = st.sampled_from(
    ["<cell>", "</cell>", "\u2581", "W", "</s>", "<|assistant|>", *("\u2581" + g for g in GENES)]
)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.lists(_ANSWER_ALPHABET, min_size=0, max_size=12), min_size=1, max_size=4),
    budget=st.sampled_from([None, 5, 6, 9]),
    data=st.data(),
)
def test_single_cell_answer_mask_matches_the_rule(tok, rows, budget, data):
    answer_constraint = CellSentenceConstraint(
        tok, GeneVocab(GENES), single_cell_answer=True, max_answer_tokens=budget
    )
    id_rows = [[_id(tok, "<|assistant|>"), *(_id(tok, t) for t in r)] for r in rows]
    input_ids = _batch(tok, id_rows)
    length = input_ids.shape[1]
    n = data.draw(st.integers(1, length))
    banned = answer_constraint.banned_after(input_ids, len(tok), n)
    for r in range(len(rows)):
        full = input_ids[r].tolist()
        for k, t in enumerate(range(length - n, length)):
            if _id(tok, "<|assistant|>") not in full[: t + 1]:
                continue  # left padding before the marker
            got = set(torch.nonzero(banned[r, k]).ravel().tolist())
            want = _reference_answer_banned(tok, answer_constraint, full[: t + 1], len(tok), budget)
            assert got == want, (r, t)


def test_single_cell_answer_exact_masks(tok, answer_constraint):
    prompt = _ids(tok, "<cell> CD3E </cell> What type<|assistant|>\n")
    everything = set(range(len(tok)))
    eos, start = tok.eos_token_id, answer_constraint.cell_start_id
    for answer, allowed in [
        ("", {start}),  # the answer opens with <cell>, even after a cell in the prompt
        ("<cell> CD3E </cell>", {eos}),  # then only the end of the turn
    ]:
        ids = torch.tensor([prompt + _ids(tok, answer)])
        got = set(torch.nonzero(answer_constraint.banned(ids, len(tok))[0]).ravel().tolist())
        assert got == everything - allowed, answer
    ids = torch.tensor([prompt + _ids(tok, "<cell> CD3E")])  # inside: the plain cell rule
    torch.testing.assert_close(
        answer_constraint.banned(ids, len(tok)),
        CellSentenceConstraint(tok, GENES).banned(ids, len(tok)),
    )


def test_single_cell_answer_needs_the_answer_marker_and_a_budget_that_fits(tok, answer_constraint):
    with pytest.raises(ValueError, match="apply the chat template"):
        answer_constraint.banned(torch.tensor([_ids(tok, "<cell> CD3E")]), len(tok))
    with pytest.raises(ValueError, match=">= 5"):
        CellSentenceConstraint(tok, GENES, single_cell_answer=True, max_answer_tokens=4)
    with pytest.raises(ValueError, match="single_cell_answer=True"):
        CellSentenceConstraint(tok, GENES, max_answer_tokens=10)


def test_single_cell_answers_are_one_valid_cell_then_eos(tok, tiny_model):
    """A random model under the answer grammar: every answer is one closed, non-empty cell of
    distinct known genes, ended by eos, with nothing after it."""
    conversation = [{"role": "user", "content": "Generate a cell of type T cell."}]
    prompt = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    prompts = [prompt] * 24
    processors = list(cell_sentence_processors(tok, GENES, single_cell_answer=True))
    free, _ = _generate(tiny_model, tok, prompts, list(cell_sentence_processors(tok, GENES)),
                        seed=2, n_new=16)  # fmt: skip
    assert not all(a.startswith("<cell>") and a.endswith("</cell></s>") for a in free)
    texts, new = _generate(tiny_model, tok, prompts, processors, seed=2, n_new=16)
    for answer, row in zip(texts, new.tolist(), strict=True):
        assert answer.startswith("<cell>") and answer.endswith("</cell></s>"), answer
        cell = extract_cell(answer)
        words = cell.sentence.split()
        assert cell.closed and words and len(set(words)) == len(words) <= len(GENES), answer
        assert set(words) <= set(GENES), answer
        assert row.count(tok.eos_token_id) == 1
    # a budget shorter than the cells: each is closed in time, its first genes kept
    budget = 7
    short = list(cell_sentence_processors(tok, GENES, single_cell_answer=True,
                                          max_answer_tokens=budget))  # fmt: skip
    cut, new = _generate(tiny_model, tok, prompts, short, seed=2, n_new=budget)
    assert any(len(extract_cell(a).sentence.split()) < len(extract_cell(b).sentence.split())
               for a, b in zip(cut, texts, strict=True))  # fmt: skip
    for answer, row in zip(cut, new.tolist(), strict=True):
        cell = extract_cell(answer)
        assert answer.endswith("</cell></s>") and cell.closed and cell.sentence, answer
        assert row.count(tok.eos_token_id) == 1


def test_min_genes_holds_the_cell_open_until_that_many_genes(tok):
    """``</cell>`` is banned until the open cell has ``min_genes`` distinct genes, then allowed;
    a repeated gene does not count (it cannot be written); the cap is the genes with tokens."""
    constraint = CellSentenceConstraint(tok, GeneVocab(GENES), min_genes=3)
    end = constraint.cell_end_id
    rows = [
        _ids(tok, "<cell> CD3E CD8A"),  # 2 genes: may not close
        _ids(tok, "<cell> CD3E CD8A NKG7"),  # 3 genes: may close
        _ids(tok, "<cell> CD3E CD8A NKG7 </cell> and <cell> LYZ"),  # a new cell counts anew
    ]
    banned = constraint.banned(_batch(tok, rows), len(tok))
    assert [bool(b) for b in banned[:, end]] == [True, False, True]
    assert CellSentenceConstraint(tok, GeneVocab(GENES), min_genes=50).min_genes == len(GENES)
    with pytest.raises(ValueError, match="min_genes=0"):
        CellSentenceConstraint(tok, GeneVocab(GENES), min_genes=0)


def test_min_genes_yields_to_the_answer_budget(tok):
    """A cell that reaches the budget is closed even below ``min_genes``."""
    constraint = CellSentenceConstraint(
        tok, GeneVocab(GENES), single_cell_answer=True, max_answer_tokens=6, min_genes=5
    )
    prompt = _ids(tok, "What type<|assistant|>\n")
    short = constraint.banned(torch.tensor([prompt + _ids(tok, "<cell> CD3E CD8A")]), len(tok))
    assert short[0, constraint.cell_end_id]  # 2 genes, budget not reached: stays open
    full = prompt + _ids(tok, "<cell> CD3E CD8A NKG7")  # <cell> + 3 genes: </cell> + end fit
    banned = constraint.banned(torch.tensor([full]), len(tok))[0]
    assert set(torch.nonzero(~banned).ravel().tolist()) == {constraint.cell_end_id}
