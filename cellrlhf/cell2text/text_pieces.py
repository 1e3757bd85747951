"""The natural-language pieces of a ``gene_tokens`` tokenizer, fitted deterministically.

:func:`fit_text_pieces` keeps the *set* of pieces the ``tokenizers`` Unigram trainer finds on the
task texts (plus whole frequent words and every printable character) and re-scores them by a
Viterbi EM that is a pure function of its inputs, so the same texts always give the same
tokenizer (:func:`~cellrlhf.cell2text.tokenizer.build_cell_tokenizer`).
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Iterable, Sequence

__all__ = ["SPACE", "fit_text_pieces", "metaspace"]

SPACE = "\u2581"  # "▁", SentencePiece's visible space
_ALPHABET = (*(c for c in string.printable if c not in " \r\x0b\x0c"), SPACE)


def fit_text_pieces(
    texts: Iterable[str], vocab_size: int, *, unk_token: str
) -> list[tuple[str, float]]:
    """Unigram pieces fitted on ``texts`` plus every printable ASCII character (scores < 0).

    Deterministic: the same texts give the same pieces, scores and order in every call and every
    process. The ``tokenizers`` Unigram trainer is not (its EM visits hash maps in a per-process
    random order, so scores of the same pieces differ by up to ~1e-2 and pieces of equal score
    swap places), so only its *set* of pieces is kept; the scores are re-estimated here by
    Viterbi EM over the sorted word counts (:func:`_viterbi_em_scores`) and the pieces ordered by
    ``(-score, piece)``. ``unk_token`` is the tokenizer's unknown token (never a piece).
    """
    from tokenizers import Tokenizer, models, trainers

    corpus = [t for t in texts if isinstance(t, str) and t]
    alphabet = [c for c in _ALPHABET]
    if not corpus:
        score = -math.log(len(alphabet))
        return [(c, score) for c in alphabet]
    trainer = trainers.UnigramTrainer(
        vocab_size=max(int(vocab_size), len(alphabet) + 2),
        special_tokens=[unk_token],
        unk_token=unk_token,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    trained = Tokenizer(models.Unigram())
    trained.pre_tokenizer = metaspace()
    trained.train_from_iterator(corpus, trainer)
    vocab = json.loads(trained.to_str())["model"]["vocab"]
    piece_set = {p for p, _ in vocab if p != unk_token} | set(alphabet)
    words = _word_counts(corpus)
    piece_set |= _whole_words(words, room=int(vocab_size) - len(piece_set))
    scores = _viterbi_em_scores(sorted(piece_set), words)
    top = max(scores.values())
    shift = top + 1e-3 if top >= 0.0 else 0.0  # every text piece strictly below the genes' 0.0
    return sorted(((p, s - shift) for p, s in scores.items()), key=lambda ps: (-ps[1], ps[0]))


_MAX_WORD_PIECE = 24  # longer "words" (URLs, long identifiers) stay split into pieces


def _whole_words(words: Sequence[tuple[str, int]], room: int) -> set[str]:
    """The most frequent whole words of the texts, as many as ``room`` allows.

    Prompt templates are few distinct texts, so most of their words occur only a handful of times
    and the Unigram trainer alone splits common words into characters (``"Y ou a re"``): prompts
    then cost ~2.5x the tokens, which every forward pass of SFT and RL pays. A template vocabulary
    is small, so every word of it gets its own piece when the budget allows.
    """
    if room <= 0:
        return set()
    ranked = sorted(
        (wc for wc in words if 1 < len(wc[0]) <= _MAX_WORD_PIECE), key=lambda wc: (-wc[1], wc[0])
    )
    return {word for word, _ in ranked[:room]}


def metaspace():
    """The Metaspace pre-tokenizer of cell tokenizers (words start with ``SPACE``)."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=True)


def _word_counts(corpus: Sequence[str]) -> list[tuple[str, int]]:
    """Pre-tokenized words (``"▁word"``) of ``corpus`` with their counts, sorted by word."""
    from collections import Counter

    pre_tokenizer = metaspace()
    counts: Counter[str] = Counter()
    for text in corpus:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(text))
    return sorted(counts.items())


_EM_ITERATIONS = 6
_UNCOVERED = -1e3  # log-prob of one character no piece covers (not counted)


def _viterbi_em_scores(pieces: Sequence[str], words: Sequence[tuple[str, int]]) -> dict[str, float]:
    """Unigram log-probabilities of ``pieces`` by hard (Viterbi) EM on ``words``.

    Starts from equal scores (the segmentation with fewest pieces), then alternates best
    segmentation of every word and ``log(count / total)``. Ties go to the longer last piece,
    then the lexicographically smaller one; counts are summed in the order of ``words``: the
    result is a pure function of its inputs. Pieces no segmentation uses get the score of half
    an occurrence, below every used piece, so they stay writable.
    """
    by_length: dict[int, dict[str, None]] = {}
    for piece in pieces:
        by_length.setdefault(len(piece), {})[piece] = None
    lengths = sorted(by_length, reverse=True)
    scores = dict.fromkeys(pieces, 0.0)
    for _ in range(_EM_ITERATIONS):
        counts = dict.fromkeys(pieces, 0)
        for word, count in words:
            for piece in _best_segmentation(word, scores, by_length, lengths):
                counts[piece] += count
        total = float(sum(counts.values())) or 1.0
        floor = math.log(0.5 / total)
        scores = {p: (math.log(c / total) if c else floor) for p, c in counts.items()}
    return scores


def _best_segmentation(
    word: str,
    scores: dict[str, float],
    by_length: dict[int, dict[str, None]],
    lengths: Sequence[int],
) -> list[str]:
    """Highest-scoring split of ``word`` into ``pieces`` (characters no piece covers skipped)."""
    n = len(word)
    best = [-math.inf] * (n + 1)
    best[0] = 0.0
    back: list[tuple[int, str | None]] = [(0, None)] * (n + 1)
    for end in range(1, n + 1):
        for length in lengths:  # longest first: on equal scores the longer piece wins
            start = end - length
            if start < 0 or best[start] == -math.inf:
                continue
            piece = word[start:end]
            if piece not in by_length[length]:
                continue
            value = best[start] + scores[piece]
            if value > best[end]:
                best[end], back[end] = value, (start, piece)
        if best[end] == -math.inf:  # a character outside every piece: step over it
            best[end], back[end] = best[end - 1] + _UNCOVERED, (end - 1, None)
    out: list[str] = []
    end = n
    while end > 0:
        start, piece = back[end]
        if piece is not None:
            out.append(piece)
        end = start
    return out[::-1]
