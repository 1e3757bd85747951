"""The one sampler: seeding, batching, left padding, stop trimming, constraints, RNG isolation."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from cellrlhf.cell2text.markup import extract_cell
from cellrlhf.cell2text.tokenizer import build_cell_tokenizer
from cellrlhf.cell2text.vocab import GeneVocab
from cellrlhf.sampling import GenerationSettings, Sampler, answer_ids, answer_text, pad_rows
from tests.fixtures.tiny_model import random_llama

GENES = ("CD3E", "CD8A", "MS4A1", "NKG7", "GNLY", "LYZ")
TEXTS = ["What type of cell is this?", "Generate a cell of type T cell."] * 5
CONVERSATIONS = [
    [{"role": "user", "content": "Generate a cell of type T cell."}],
    [{"role": "user", "content": "What type of cell is this? <cell> CD3E CD8A NKG7 </cell>"}],
    [{"role": "user", "content": "What type of cell is this? <cell> LYZ </cell>"}],
] * 2
HOT = GenerationSettings(max_new_tokens=10, temperature=1.0, seed=1)


@pytest.fixture(scope="module")
def tok():
    return build_cell_tokenizer(GeneVocab(GENES), texts=TEXTS)


@pytest.fixture(scope="module")
def sampler(tok):
    model = random_llama(tok).eval()
    with torch.no_grad():  # larger weights: answers depend on the whole prompt, not its last token
        for name, weight in model.named_parameters():
            if "norm" not in name:
                weight.mul_(10)
    return Sampler(model, tok, cell_genes=GeneVocab(GENES))


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _texts(completions) -> list[str]:
    return [c.text for c in completions]


def _answers(completions) -> list[tuple]:
    return [(c.text, c.token_ids, c.n_tokens, c.finished) for c in completions]


# ---------------------------------------------------------------------------- seeding
def test_same_seed_same_answers_other_seed_other_answers(sampler):
    a = sampler.generate(CONVERSATIONS, HOT, batch_size=4)
    b = sampler.generate(CONVERSATIONS, HOT, batch_size=4)
    c = sampler.generate(CONVERSATIONS, GenerationSettings(max_new_tokens=10, temperature=1.0,
                                                           seed=2), batch_size=4)  # fmt: skip
    assert _answers(a) == _answers(b)
    assert _texts(a) != _texts(c)
    assert len(set(_texts(a))) > 1  # samples of one prompt differ from each other too


def test_global_rng_and_model_mode_are_left_alone(sampler):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sampler.model.train()
    try:
        sampler.generate(CONVERSATIONS[:2], HOT)
        assert sampler.model.training  # eval while sampling, restored afterwards
    finally:
        sampler.model.eval()
    assert torch.equal(torch.rand(3), expected)


def test_greedy_answers_do_not_depend_on_batch_size_or_padding(sampler):
    """Left padding is masked, so a prompt's greedy answer is the same alone or in any batch."""
    greedy = GenerationSettings(max_new_tokens=8, temperature=0.0)
    texts = ["Generate a cell <cell>", "<cell> CD3E CD8A NKG7 </cell> What type", "<cell> LYZ"]
    alone = [sampler.generate([t], greedy)[0] for t in texts]
    assert len({len(sampler.prompt_ids(t)) for t in texts}) == 3  # padding is exercised
    assert len({c.token_ids for c in alone}) == 3  # the answers depend on the prompt
    for size in (2, 3, 6):
        batched = sampler.generate(texts * 2, greedy, batch_size=size)
        assert _answers(batched) == _answers(alone) * 2


def test_sampled_answers_draw_from_one_stream_per_call(sampler):
    """Sampling seeds once per call and batches draw in turn: the first batch of a call is the
    same whatever follows it, so a prefix of the prompts gets the same answers."""
    full = sampler.generate(CONVERSATIONS, HOT, batch_size=3)
    prefix = sampler.generate(CONVERSATIONS[:3], HOT, batch_size=3)
    assert _texts(full[:3]) == _texts(prefix)


# ---------------------------------------------------------------------------- trimming
def test_answer_ids_cut_after_the_first_stop_or_before_padding():
    assert answer_ids([5, 6, 2, 7, 2], [2], 0) == [5, 6, 2]
    assert answer_ids([5, 6, 0, 0], [2], 0) == [5, 6]
    assert answer_ids([5, 6, 7], [2, 3], 0) == [5, 6, 7]
    assert answer_ids([3, 5], [2, 3], 0) == [3]
    assert answer_ids([], [2], 0) == []


def test_completion_of_a_hand_made_row(sampler, tok):
    cell = _ids(tok, "<cell> CD3E LYZ </cell>")
    eos, pad = tok.eos_token_id, tok.pad_token_id
    done = sampler._completion([*cell, eos, *cell, pad], None)
    assert (done.text, done.finished, done.n_tokens) == ("<cell> CD3E LYZ </cell>", True,
                                                         len(cell) + 1)  # fmt: skip
    assert done.token_ids == (*cell, eos) and math.isnan(done.logprob)
    cut = sampler._completion([*cell, pad, pad], None)
    assert (cut.text, cut.finished, cut.n_tokens) == ("<cell> CD3E LYZ </cell>", False, len(cell))
    assert sampler.clean([*cell, eos, 9]) == ("<cell> CD3E LYZ </cell>", True)
    assert answer_text(tok, [*cell, eos, *cell], [eos]) == "<cell> CD3E LYZ </cell>"


def test_stop_tokens_are_the_tokenizers_and_the_models_or_the_given_ones(sampler, tok):
    model = sampler.model
    model.generation_config.eos_token_id = [tok.eos_token_id, 7]
    try:
        assert Sampler(model, tok).stop_ids == [tok.eos_token_id, 7]
    finally:
        model.generation_config.eos_token_id = tok.eos_token_id
    assert Sampler(model, tok, stop_ids=[9]).stop_ids == [9]
    forced = Sampler(model, tok, stop_ids=[9])._completion([5, 9, 6], None)
    assert forced.token_ids == (5, 9) and forced.finished


def test_generated_answers_end_at_their_stop_token(sampler, tok):
    stop = _ids(tok, "T")[-1]  # a frequent token of the random model stands in for eos
    done = Sampler(sampler.model, tok, stop_ids=[stop]).generate(CONVERSATIONS, HOT)
    for c in done:
        assert len(c.token_ids) == c.n_tokens <= HOT.max_new_tokens
        assert c.finished == (stop in c.token_ids)
        assert stop not in c.token_ids[:-1]


def test_pad_rows_pads_on_either_side():
    ids, mask = pad_rows([[1, 2, 3], [4]], 0, "left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_rows([[4], []], 0, "right", min_width=2)
    assert ids.tolist() == [[4, 0], [0, 0]] and mask.tolist() == [[1, 0], [0, 0]]


def test_text_prompts_keep_special_tokens(sampler, tok):
    assert sampler.prompt_ids("What type") == tok("What type")["input_ids"]
    assert sampler.prompt_ids(CONVERSATIONS[0]) == _ids(tok, sampler.prompt_text(CONVERSATIONS[0]))
    with pytest.raises(ValueError, match="must end with a user"):
        sampler.prompt_ids([{"role": "assistant", "content": "hi"}])


# ---------------------------------------------------------------------------- constraints
def test_single_cell_answers_are_valid_cells(sampler):
    settings = GenerationSettings(max_new_tokens=12, temperature=1.5, seed=4,
                                  constrain_cells=True, single_cell_answer=True)  # fmt: skip
    done = sampler.generate(CONVERSATIONS, settings, batch_size=4)
    for c in done:
        cell = extract_cell(c.text)
        words = cell.sentence.split()
        assert c.text.startswith("<cell>") and c.text.endswith("</cell>") and cell.closed
        assert c.finished and 0 < len(words) == len(set(words)) and set(words) <= set(GENES)
    free = sampler.generate(CONVERSATIONS, HOT, batch_size=4)
    assert not all(extract_cell(c.text).closed for c in free)


def test_min_genes_gives_cells_of_at_least_that_many_genes(sampler):
    n = min(4, len(GENES))
    settings = GenerationSettings(max_new_tokens=3 * n + 4, temperature=1.5, seed=4,
                                  constrain_cells=True, single_cell_answer=True, min_genes=n)  # fmt: skip
    done = sampler.generate(CONVERSATIONS, settings, batch_size=4)
    lengths = [len(extract_cell(c.text).sentence.split()) for c in done]
    assert min(lengths) >= n
    plain = sampler.generate(CONVERSATIONS, replace(settings, min_genes=1), batch_size=4)
    assert min(len(extract_cell(c.text).sentence.split()) for c in plain) < n


def test_constraint_needs_genes_and_an_explicit_one_wins(sampler, tok):
    bare = Sampler(sampler.model, tok)
    assert len(bare.logits_processors(GenerationSettings())) == 0
    with pytest.raises(ValueError, match="cell_genes"):
        bare.generate(CONVERSATIONS[:1], GenerationSettings(constrain_cells=True))
    marker = object()
    given = Sampler(sampler.model, tok, constraint=marker)
    assert list(given.logits_processors(GenerationSettings(constrain_cells=True))) == [marker]


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="single_cell_answer"):
        GenerationSettings(single_cell_answer=True)
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        GenerationSettings(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="min_genes"):
        GenerationSettings(min_genes=3)  # a rule of the constraint
    with pytest.raises(ValueError, match="min_genes"):
        GenerationSettings(min_genes=0, constrain_cells=True)


# ---------------------------------------------------------------------------- scores
def test_logprobs_of_greedy_answers_match_their_scores(sampler):
    """The log-probability kept while generating equals a forward pass over prompt + answer."""
    greedy = GenerationSettings(max_new_tokens=6, temperature=0.0)
    done = sampler.generate(CONVERSATIONS[:3], greedy, logprobs=True)
    for conv, c in zip(CONVERSATIONS[:3], done, strict=True):
        prompt = sampler.prompt_ids(conv)
        with torch.no_grad():
            logits = sampler.model(torch.tensor([prompt + list(c.token_ids)])).logits[0]
        logp = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), -1)
        direct = logp.gather(-1, torch.tensor(c.token_ids)[:, None]).sum().item()
        assert c.logprob == pytest.approx(direct, abs=1e-4)
    assert math.isnan(sampler.generate(CONVERSATIONS[:1], greedy)[0].logprob)


def test_prompt_longer_than_the_context_is_refused(sampler):
    long = [{"role": "user", "content": " ".join(["CD3E"] * 200)}]
    with pytest.raises(ValueError, match="fills the model's context"):
        sampler.generate([long], HOT)


# ---------------------------------------------------------------------------- shared prompt
def test_a_shared_prompt_encoded_once_gives_the_same_answers(sampler, tok, monkeypatch):
    """Rows that repeat one prompt start from its cache: the same tokens and log-probabilities
    as encoding every row, sampled, greedy or under the grammar; mixed batches encode rows."""
    import cellrlhf.sampling.sampler as sampler_module

    calls = []
    real = sampler_module.prompt_cache
    monkeypatch.setattr(sampler_module, "prompt_cache", lambda *a: calls.append(a[2]) or real(*a))
    every_row = Sampler(sampler.model, tok, cell_genes=GeneVocab(GENES), share_prompt=False)
    repeated = [CONVERSATIONS[1]] * 6 + [CONVERSATIONS[0]] * 3
    cell = GenerationSettings(max_new_tokens=12, temperature=1.5, seed=4,
                              constrain_cells=True, single_cell_answer=True)  # fmt: skip
    for settings in (HOT, GenerationSettings(max_new_tokens=6), cell):
        calls.clear()
        shared = sampler.generate(repeated, settings, batch_size=3, logprobs=True)
        assert calls == [3, 3, 3]  # every batch is one prompt
        encoded = every_row.generate(repeated, settings, batch_size=3, logprobs=True)
        assert calls == [3, 3, 3]
        assert _answers(shared) == _answers(encoded)
        assert [c.logprob for c in shared] == pytest.approx([c.logprob for c in encoded], abs=1e-5)
        assert len(set(_texts(shared[:6]))) > 1 or settings.temperature == 0
    calls.clear()
    sampler.generate(repeated, HOT, batch_size=4)  # [1 1 1 1] [1 1 0 0] [0]
    assert calls == [4]


def test_shared_prompt_and_a_model_without_a_cache():
    from cellrlhf.sampling.prefix_cache import prompt_cache, shared_prompt

    assert shared_prompt([[5, 6], [5, 6]]) == [5, 6]
    assert shared_prompt([[5, 6], [5, 7]]) is None
    assert shared_prompt([[5, 6]]) is None  # one row: nothing to share
    assert shared_prompt([[5], [5]]) is None  # one token: nothing before the last one
    assert shared_prompt([(5, 6, 7)] * 3) == [5, 6, 7]

    class NoCache(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, use_cache=None):
            return type("Out", (), {"logits": torch.zeros(1, input_ids.shape[1], 4)})()

    assert prompt_cache(NoCache(), [5, 6, 7], 4, "cpu", 8) == {}


def test_reserved_cache_layers_write_in_place_and_grow_past_their_room(sampler, tok):
    """The prompt's cache gets room for the answer: updates land in place and read back as the
    concatenation would; past the room, or once its views were replaced, the layer concatenates."""
    from cellrlhf.sampling.prefix_cache import prompt_cache

    prompt = sampler.prompt_ids(CONVERSATIONS[1])
    with torch.no_grad():
        (cache,) = prompt_cache(sampler.model, prompt, 3, "cpu", 2).values()
    layer = cache.layers[0]
    assert type(layer).__name__ == "ReservedLayer" and layer.keys.shape[0] == 3
    n = len(prompt) - 1
    expected_k, expected_v = layer.keys.clone(), layer.values.clone()
    buffer = layer.keys.data_ptr()
    for step in range(5):  # room for 3 (the last prompt token and 2 answer tokens), then grows
        k = torch.randn(3, layer.keys.shape[1], 1, layer.keys.shape[-1])
        v = torch.randn_like(k)
        keys, values = layer.update(k, v)
        expected_k, expected_v = torch.cat([expected_k, k], -2), torch.cat([expected_v, v], -2)
        assert torch.equal(keys, expected_k) and torch.equal(values, expected_v)
        assert layer.get_seq_length() == n + step + 1
        assert (keys.data_ptr() == buffer) == (step < 3)
    with torch.no_grad():
        (cache,) = prompt_cache(sampler.model, prompt, 2, "cpu", 4).values()
    layer = cache.layers[0]
    layer.keys, layer.values = layer.keys[[1, 0]], layer.values[[1, 0]]  # beam reordering
    k = torch.randn(2, layer.keys.shape[1], 1, layer.keys.shape[-1])
    keys, _ = layer.update(k, k)
    assert torch.equal(keys[:, :, -1:], k) and keys.shape[-2] == n + 1
