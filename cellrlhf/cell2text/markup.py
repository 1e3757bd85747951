"""How cells and perturbations are written inside prompts and answers.

A cell sentence inside a chat message is always wrapped as ``<cell> G1 G2 ... </cell>`` with
spaces around every gene, so that each gene is one word for every tokenizer mode. Perturbation
targets are written as gene words too, ``<pert> KLF1 CEBPA </pert>``; a target the model has no
token for is written as ``<unk_pert>``. These markers are special tokens of the cell tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "CELL_START",
    "CELL_END",
    "PERT_START",
    "PERT_END",
    "UNK_PERT",
    "CONTROL_PERT",
    "MARKUP_TOKENS",
    "format_cell",
    "format_perturbation",
    "ExtractedCell",
    "extract_cell",
    "split_perturbation",
]

CELL_START = "<cell>"
CELL_END = "</cell>"
PERT_START = "<pert>"
PERT_END = "</pert>"
UNK_PERT = "<unk_pert>"
CONTROL_PERT = "<control>"
MARKUP_TOKENS = (CELL_START, CELL_END, PERT_START, PERT_END, UNK_PERT, CONTROL_PERT)


def format_cell(sentence: str) -> str:
    """``"CD3E CD8A"`` -> ``"<cell> CD3E CD8A </cell>"`` (an empty cell is ``"<cell> </cell>"``)."""
    sentence = sentence.strip()
    return f"{CELL_START} {sentence} {CELL_END}" if sentence else f"{CELL_START} {CELL_END}"


def split_perturbation(perturbation: str, *, sep: str = "+") -> list[str]:
    """``"KLF1+CEBPA"`` -> ``["KLF1", "CEBPA"]``; blanks are dropped."""
    return [t.strip() for t in str(perturbation).split(sep) if t.strip()]


def format_perturbation(
    targets: Iterable[str], *, known: set[str] | None = None, control: bool = False
) -> str:
    """Write perturbation targets as words: ``<pert> KLF1 CEBPA </pert>``.

    Parameters
    ----------
    targets
        Target gene symbols (``split_perturbation("A+B")``).
    known
        Upper-cased symbols the model has tokens for; others become ``<unk_pert>``. ``None``
        keeps every target.
    control
        Write the control condition (``<pert> <control> </pert>``).
    """
    if control:
        words = [CONTROL_PERT]
    else:
        words = [t if known is None or t.upper() in known else UNK_PERT for t in targets]
    return f"{PERT_START} {' '.join(words)} {PERT_END}"


@dataclass(frozen=True)
class ExtractedCell:
    """The first cell sentence found in a model's text.

    Attributes
    ----------
    sentence
        The words between ``<cell>`` and ``</cell>`` (or the end of the text), space-joined.
    found
        Whether a ``<cell>`` marker was present at all. Without it the whole text is read as
        the sentence (models trained to answer with a bare sentence).
    closed
        Whether the sentence was closed by ``</cell>``: an unclosed one usually hit the length cap.
    """

    sentence: str
    found: bool
    closed: bool


def extract_cell(text: str) -> ExtractedCell:
    """Find the cell sentence in generated text; never raises on malformed text."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    start = text.find(CELL_START)
    if start < 0:
        return ExtractedCell(_words(text), found=False, closed=False)
    body_start = start + len(CELL_START)
    end = text.find(CELL_END, body_start)
    body = text[body_start:] if end < 0 else text[body_start:end]
    return ExtractedCell(_words(body), found=True, closed=end >= 0)


def _words(text: str) -> str:
    """Whitespace-joined words; a NUL (a model can write the byte token ``<0x00>``) becomes
    U+FFFD, an unknown word for the decoder that HDF5 and other string stores can hold."""
    return " ".join(text.replace("\x00", "\ufffd").split())
