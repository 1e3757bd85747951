"""What happened to each sentence when it was decoded back to expression.

Model output is often malformed: unknown words, repeated genes (a known reward hack is to fill the
length cap with repeats), empty answers, answers that never close ``</cell>``. The decoder never
raises on such text; it counts every case here so that rewards and evaluations can see them.

Every word of a sentence falls in exactly one bucket::

    n_words == n_valid + n_unknown + n_duplicates + n_truncated
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

__all__ = ["DecodeReport"]


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


@dataclass(frozen=True)
class DecodeReport:
    """Per-sentence validity counts of one :meth:`ExpressionDecoder.decode` call.

    Attributes
    ----------
    n_words
        Whitespace-separated words of the sentence (inside ``<cell> ... </cell>`` when present).
    n_valid
        Distinct vocabulary genes decoded (each one consumed a rank position).
    n_unknown
        Words that are not vocabulary genes. They do not consume a rank position.
    n_duplicates
        Words naming a gene already seen earlier in the same sentence (case-insensitively).
        Only the first occurrence is decoded; repeats consume no rank position.
    n_truncated
        Distinct genes beyond the decoder's ``max_genes`` cap, ignored.
    empty
        The sentence had no words at all (empty string, only whitespace, ``<cell> </cell>``,
        ``None`` or a non-text value).
    marked
        The text contained a ``<cell>`` marker (the sentence was read between the markers).
    closed
        ``</cell>`` closed the marked sentence. ``False`` for unmarked text; an unclosed marked
        sentence usually hit the generation length cap.
    not_text
        The input was not a string (``None``, a number...); it decoded to an all-zero row.
    """

    n_words: np.ndarray
    n_valid: np.ndarray
    n_unknown: np.ndarray
    n_duplicates: np.ndarray
    n_truncated: np.ndarray
    empty: np.ndarray
    marked: np.ndarray
    closed: np.ndarray
    not_text: np.ndarray

    def __post_init__(self) -> None:
        lengths = {len(getattr(self, f.name)) for f in fields(self)}
        if len(lengths) > 1:
            raise ValueError(f"DecodeReport arrays have different lengths: {sorted(lengths)}.")

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return len(self.n_words)

    @property
    def n_sentences(self) -> int:
        return len(self)

    # ------------------------------------------------------------------ per sentence
    @property
    def valid_fractions(self) -> np.ndarray:
        """Per sentence: decoded genes / words (0 for a sentence without words)."""
        return self.n_valid / np.maximum(self.n_words, 1)

    @property
    def duplicate_fractions(self) -> np.ndarray:
        """Per sentence: repeated gene words / words (0 for a sentence without words)."""
        return self.n_duplicates / np.maximum(self.n_words, 1)

    @property
    def zero_rows(self) -> np.ndarray:
        """Per sentence: no gene could be decoded (the expression row is all zero)."""
        return self.n_valid == 0

    # ------------------------------------------------------------------ aggregates
    @property
    def total_words(self) -> int:
        return int(self.n_words.sum())

    @property
    def valid_fraction(self) -> float:
        """Fraction of all words that were decoded as genes."""
        return _ratio(self.n_valid.sum(), self.total_words)

    @property
    def unknown_fraction(self) -> float:
        """Fraction of all words that are not vocabulary genes."""
        return _ratio(self.n_unknown.sum(), self.total_words)

    @property
    def duplicate_fraction(self) -> float:
        """Fraction of all words that repeat a gene already in their sentence."""
        return _ratio(self.n_duplicates.sum(), self.total_words)

    @property
    def truncated_fraction(self) -> float:
        """Fraction of all words dropped by the ``max_genes`` cap."""
        return _ratio(self.n_truncated.sum(), self.total_words)

    @property
    def empty_fraction(self) -> float:
        """Fraction of sentences without any word."""
        return _ratio(self.empty.sum(), len(self))

    @property
    def zero_row_fraction(self) -> float:
        """Fraction of sentences that decoded to an all-zero row (empty or no known gene)."""
        return _ratio(self.zero_rows.sum(), len(self))

    @property
    def unclosed_fraction(self) -> float:
        """Among sentences with a ``<cell>`` marker, the fraction never closed by ``</cell>``."""
        return _ratio((self.marked & ~self.closed).sum(), self.marked.sum())

    @property
    def mean_length(self) -> float:
        """Mean number of words per sentence."""
        return _ratio(self.n_words.sum(), len(self))

    @property
    def mean_valid_length(self) -> float:
        """Mean number of decoded genes per sentence."""
        return _ratio(self.n_valid.sum(), len(self))

    def to_dict(self, *, per_sentence: bool = False) -> dict:
        """JSON-ready summary; ``per_sentence=True`` adds the per-sentence lists."""
        out = {
            "n_sentences": len(self),
            "total_words": self.total_words,
            "valid_fraction": self.valid_fraction,
            "unknown_fraction": self.unknown_fraction,
            "duplicate_fraction": self.duplicate_fraction,
            "truncated_fraction": self.truncated_fraction,
            "empty_fraction": self.empty_fraction,
            "zero_row_fraction": self.zero_row_fraction,
            "unclosed_fraction": self.unclosed_fraction,
            "mean_length": self.mean_length,
            "mean_valid_length": self.mean_valid_length,
            "n_not_text": int(self.not_text.sum()),
        }
        if per_sentence:
            out["per_sentence"] = {f.name: getattr(self, f.name).tolist() for f in fields(self)}
        return out

    @classmethod
    def concatenate(cls, reports: Sequence[DecodeReport]) -> DecodeReport:
        """One report for consecutive batches (in order)."""
        if not reports:
            return cls.empty_report(0)
        return cls(
            **{f.name: np.concatenate([getattr(r, f.name) for r in reports]) for f in fields(cls)}
        )

    @classmethod
    def empty_report(cls, n: int) -> DecodeReport:
        """A report of ``n`` sentences with every count at zero (used for empty batches)."""
        counts = {name: np.zeros(n, dtype=np.int32) for name in _COUNT_FIELDS}
        flags = {name: np.zeros(n, dtype=bool) for name in _FLAG_FIELDS}
        return cls(**counts, **flags)


_COUNT_FIELDS = ("n_words", "n_valid", "n_unknown", "n_duplicates", "n_truncated")
_FLAG_FIELDS = ("empty", "marked", "closed", "not_text")
