"""Cell tokenizers: one token per gene, exact round trips, chat template, the three modes."""

from __future__ import annotations

import json
import logging
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from cellrlhf.cell2text.markup import MARKUP_TOKENS, format_cell, format_perturbation
from cellrlhf.cell2text.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    MODE_KEY,
    ROLE_TOKENS,
    add_gene_tokens,
    build_cell_tokenizer,
    gene_token_ids,
    gene_token_init_pieces,
    genes_as_text_tokenizer,
    load_cell_tokenizer,
    round_trip_failures,
    tokenizer_mode,
)
from cellrlhf.cell2text.vocab import GeneVocab

GENES = (
    "CD3E", "CD8A", "MS4A1", "HLA-DRA", "MT-CO1", "RP11-34P13.3", "C1orf112", "IGHV3-23",
    "A", "NKG7", "GNLY", "LYZ", "S100A8", "TMSB4X", "KLF1", "CEBPA",
)  # fmt: skip
TARGETS = ("SPI1", "cebpa", "GATA1")  # "cebpa" is the measured CEBPA: no second token
TEMPLATES = [
    "What type of cell is this?",
    "Predict the expression of the cell after the perturbation.",
    "Answer with the name of the cell type only.\nThe cell is a T cell.",
    "Which genes go up after knocking down KLF1?",
] * 10
CHAT = [
    {"role": "system", "content": "You are a cell biologist."},
    {"role": "user", "content": f"What happens after {format_perturbation(['KLF1'])}? "
     f"{format_cell('CD3E CD8A NKG7')}"},
    {"role": "assistant", "content": format_cell("MS4A1 CD3E\nGNLY")},
    {"role": "user", "content": "And the cell type?"},
    {"role": "assistant", "content": "A B cell."},
]  # fmt: skip


@pytest.fixture(scope="module")
def cell_tokenizer():
    return build_cell_tokenizer(GeneVocab(GENES), extra_genes=TARGETS, texts=TEMPLATES)


def _byte_level_base():
    """A tiny GPT-2-style byte-level BPE, trained here (no hub)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([*TEMPLATES, "CD3E CD8A cells express CD4"] * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")


def _metaspace_base(legacy: bool = False):
    """A tiny Llama-style byte-fallback BPE (``legacy``: SentencePiece's per-section prefix)."""
    backend = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    if legacy:
        backend.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        )
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
    backend.train_from_iterator(TEMPLATES * 5, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _round_trips(tokenizer, text: str) -> bool:
    return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def _assistant_text_from_mask(tokenizer, messages):
    out = tokenizer.apply_chat_template(
        messages, return_assistant_tokens_mask=True, return_dict=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    return tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m]), ids


# ---------------------------------------------------------------------- mode (a)
def test_every_gene_is_one_token_with_contiguous_ids(cell_tokenizer):
    genes = [*GENES, "SPI1", "GATA1"]
    ids = gene_token_ids(cell_tokenizer, genes)
    assert -1 not in ids and len(set(ids)) == len(genes)
    assert ids == list(range(len(cell_tokenizer) - len(genes), len(cell_tokenizer)))
    assert gene_token_ids(cell_tokenizer, ["cebpa", "NOTAGENE"]) == [-1, -1]  # case-sensitive
    sentence = " ".join(genes)
    encoded = cell_tokenizer.encode(sentence, add_special_tokens=False)
    assert encoded == ids
    assert cell_tokenizer.convert_ids_to_tokens(encoded[:2]) == ["▁CD3E", "▁CD8A"]


def test_special_tokens_and_layout(cell_tokenizer):
    tok = cell_tokenizer
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_tokens_to_ids("<0x0A>") != tok.unk_token_id
    for marker in MARKUP_TOKENS + ROLE_TOKENS:
        assert len(tok.encode(marker, add_special_tokens=False)) == 1, marker
    assert tok.encode("CD3E")[:1] == [tok.bos_token_id]  # bos added, no eos
    assert tokenizer_mode(tok) == "gene_tokens"
    cell = tok.encode(format_cell("CD3E CD8A MS4A1"), add_special_tokens=False)
    assert len(cell) == 3 + 3  # <cell>, three genes, "▁", </cell>


def test_genes_never_split_inside_markup_and_case_is_kept(cell_tokenizer):
    tok = cell_tokenizer
    tokens = tok.tokenize("<cell> HLA-DRA RP11-34P13.3 IGHV3-23 </cell> cd3e CD3EX")
    assert tokens[:4] == ["<cell>", "▁HLA-DRA", "▁RP11-34P13.3", "▁IGHV3-23"]
    assert "▁cd3e" not in tokens and "cd3e" in tok.decode(tok.convert_tokens_to_ids(tokens))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([*GENES, "SPI1", "GATA1"]), max_size=40))
def test_cell_sentences_round_trip_one_token_per_gene(cell_tokenizer, genes):
    sentence = " ".join(genes)
    ids = cell_tokenizer.encode(sentence, add_special_tokens=False)
    assert len(ids) == len(genes)
    assert cell_tokenizer.decode(ids) == sentence
    wrapped = format_cell(sentence)
    assert _round_trips(cell_tokenizer, wrapped)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\u2581", blacklist_categories=("Cs",))))
def test_any_text_round_trips(cell_tokenizer, text):
    """Exact, except the documented case: one leading space of the text is dropped."""
    decoded = cell_tokenizer.decode(cell_tokenizer.encode(text, add_special_tokens=False))
    assert decoded == (text[1:] if text.startswith(" ") else text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.printable, max_size=60).filter(lambda t: not t.startswith(" ")))
def test_printable_text_round_trips_with_specials(cell_tokenizer, text):
    full = f"{BOS_TOKEN}{text}<cell> CD3E {text}</cell>{EOS_TOKEN}"
    assert _round_trips(cell_tokenizer, text) and _round_trips(cell_tokenizer, full)


def test_chat_template_and_assistant_mask(cell_tokenizer):
    tok = cell_tokenizer
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert text.startswith(BOS_TOKEN + "<|system|>\nYou are a cell biologist.<|end|>\n<|user|>\n")
    assert text.endswith("<|assistant|>\nA B cell." + EOS_TOKEN)
    assert _round_trips(tok, text)
    assistant, ids = _assistant_text_from_mask(tok, CHAT)
    assert assistant == CHAT[2]["content"] + EOS_TOKEN + CHAT[4]["content"] + EOS_TOKEN
    assert ids == tok.encode(text, add_special_tokens=False)
    prompt = tok.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")
    with pytest.raises(Exception, match="unknown chat role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)
    # markup survives skip_special_tokens (generated cells stay extractable), roles do not
    plain = tok.decode(ids, skip_special_tokens=True)
    assert "<cell> MS4A1 CD3E\nGNLY </cell>" in plain and "<|user|>" not in plain


def test_no_texts_still_round_trips():
    tok = build_cell_tokenizer(["CD3E", "CD8A"])
    for text in ["CD3E CD8A", "Hello, world!\n\tTabs & ümlauts 🧬", format_cell("CD8A CD3E")]:
        assert _round_trips(tok, text)
    assert len(tok.encode(" CD3E", add_special_tokens=False)) == 1


def test_bad_gene_symbols_are_refused():
    with pytest.raises(ValueError, match="whitespace"):
        build_cell_tokenizer(["CD3E", "BAD NAME"])
    with pytest.raises(ValueError, match="markup"):
        build_cell_tokenizer(["CD3E", "<cell>"])


def test_save_load_round_trip(cell_tokenizer, tmp_path):
    cell_tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config[MODE_KEY] == "gene_tokens"
    text = cell_tokenizer.apply_chat_template(CHAT, tokenize=False)
    for loaded in (load_cell_tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert tokenizer_mode(loaded) == "gene_tokens"
        assert loaded.apply_chat_template(CHAT, tokenize=False) == text
        assert loaded.encode(text) == cell_tokenizer.encode(text)
        assert loaded.decode(loaded.encode(text, add_special_tokens=False)) == text
        assert gene_token_ids(loaded, GENES) == gene_token_ids(cell_tokenizer, GENES)
        assert _assistant_text_from_mask(loaded, CHAT) == _assistant_text_from_mask(
            cell_tokenizer, CHAT
        )


def test_load_refuses_a_plain_tokenizer(tmp_path):
    _byte_level_base().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=MODE_KEY):
        load_cell_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_cell_tokenizer(tmp_path / "missing")


# ---------------------------------------------------------------------- mode (b)
@pytest.mark.parametrize("make_base", [_byte_level_base, _metaspace_base])
def test_add_gene_tokens(make_base, tmp_path):
    base = make_base()
    base_len = len(base)
    genes = [*GENES, "SPI1"]
    pieces = gene_token_init_pieces(base, genes)
    result = add_gene_tokens(base, GeneVocab(tuple(genes)))
    tok = result.tokenizer
    assert len(base) == base_len and tokenizer_mode(base) is None  # base untouched
    assert tokenizer_mode(tok) == "added_gene_tokens"
    assert result.new_token_ids == list(range(base_len, len(tok)))
    for gene in genes:
        token_id = result.gene_token_ids[gene]
        assert tok.encode(" " + gene, add_special_tokens=False) == [token_id]
        if token_id >= base_len:
            assert result.init_pieces[token_id] == pieces[gene]
            assert base.decode(pieces[gene]).strip() == gene
    cell_id = tok.convert_tokens_to_ids("<cell>")
    assert result.init_pieces[cell_id] == base.encode("<cell>", add_special_tokens=False)
    sentence = format_cell(" ".join(genes))
    ids = tok.encode(sentence, add_special_tokens=False)
    assert ids[1 : 1 + len(genes)] == [result.gene_token_ids[g] for g in genes]
    assert round_trip_failures(tok, [sentence, "plain text, CD3EX and cd3e\n"]) == []
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert _round_trips(tok, text)
    assistant, _ = _assistant_text_from_mask(tok, CHAT)
    assert assistant == CHAT[2]["content"] + tok.eos_token + CHAT[4]["content"] + tok.eos_token
    tok.save_pretrained(tmp_path)
    loaded = load_cell_tokenizer(tmp_path)
    assert tokenizer_mode(loaded) == "added_gene_tokens"
    assert loaded.encode(text) == tok.encode(text) and len(loaded) == len(tok)


@pytest.fixture(scope="module")
def added_byte_level():
    return add_gene_tokens(_byte_level_base(), GENES)


@settings(max_examples=150, deadline=None)
@given(
    genes=st.lists(st.sampled_from(GENES), max_size=30),
    text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
)
def test_added_gene_tokens_round_trip(added_byte_level, genes, text):
    tok = added_byte_level.tokenizer
    cell = format_cell(" ".join(genes))
    ids = tok.encode(cell, add_special_tokens=False)
    assert tok.decode(ids) == cell
    assert len(ids) <= len(genes) + 3  # <cell>, one token per gene, " ", </cell>
    full = f"{text}{cell}{text}"
    assert _round_trips(tok, full)


def test_legacy_base_is_flagged(caplog):
    with caplog.at_level(logging.WARNING):
        result = add_gene_tokens(_metaspace_base(legacy=True), ["CD3E"])
    assert "legacy" in caplog.text
    assert round_trip_failures(result.tokenizer)


# ---------------------------------------------------------------------- mode (c)
@pytest.mark.parametrize("make_base", [_byte_level_base, _metaspace_base])
def test_genes_as_text(make_base, tmp_path):
    base = make_base()
    tok = genes_as_text_tokenizer(base)
    assert len(tok) == len(base) and tok.get_vocab() == base.get_vocab()
    assert tokenizer_mode(tok) == "genes_as_text" and tok.pad_token == tok.eos_token
    assert tok.encode("CD3E CD8A", add_special_tokens=False) == base.encode(
        "CD3E CD8A", add_special_tokens=False
    )
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert _round_trips(tok, text) and round_trip_failures(tok) == []
    assistant, _ = _assistant_text_from_mask(tok, CHAT)
    assert assistant.endswith("A B cell." + tok.eos_token)
    with_markup = genes_as_text_tokenizer(base, add_markup_tokens=True)
    assert len(with_markup) == len(base) + len(MARKUP_TOKENS)
    assert len(with_markup.encode("<cell>", add_special_tokens=False)) == 1
    tok.save_pretrained(tmp_path)
    assert load_cell_tokenizer(tmp_path).encode(text) == tok.encode(text)


def test_base_without_eos_is_refused():
    base = _byte_level_base()
    base.eos_token = None
    with pytest.raises(ValueError, match="eos_token"):
        genes_as_text_tokenizer(base)
