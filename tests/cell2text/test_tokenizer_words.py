"""A fresh cell tokenizer writes the words of its prompt templates as whole tokens."""

from cellrlhf.cell2text.tokenizer import build_cell_tokenizer

TEMPLATES = [
    "You are a single-cell biology assistant. A cell is written as: the genes it expresses.",
    "Which cell line best matches this expression profile?",
    "What does a k562 cell look like after CRISPR activation of ?",
    "Identify the perturbation of this k562 cell.",
]


def test_template_words_are_single_tokens():
    tokenizer = build_cell_tokenizer(["CD3E", "MS4A1"], texts=TEMPLATES)
    for text in TEMPLATES:
        words = text.split()
        tokens = tokenizer.tokenize(text)
        assert tokens == ["▁" + w for w in words], (text, tokens)
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_words_outside_the_budget_still_round_trip():
    tokenizer = build_cell_tokenizer(["CD3E"], texts=TEMPLATES, vocab_size=100)
    text = "Which cell line best matches this expression profile? Unseen-word xyzzy."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
