"""The task prompts a model was instruction-tuned on, and parsers of its answers.

Prompts are rendered from the data stage's task templates (``cellrlhf/data/templates/*.json``,
the package data the SFT examples were written from), so a question asked through
:class:`~cellrlhf.chat.cell_lm.CellLM` reads exactly like a training example: same system prompt,
same wording (the first paraphrase of each template), same markup (``<cell> ... </cell>``,
``<pert> ... </pert>``). When the model's ``data_manifest.json`` records template checksums that
differ from the installed templates, a warning says so (the model was trained with other
wording; pass ``templates_dir``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cellrlhf.cell2text.markup import (
    CELL_END,
    CELL_START,
    CONTROL_PERT,
    PERT_END,
    PERT_START,
    UNK_PERT,
    format_cell,
    format_perturbation,
    split_perturbation,
)

__all__ = [
    "TaskPrompts",
    "ParsedPerturbation",
    "parse_label",
    "parse_effect",
    "parse_perturbation",
    "CONTROL_WORDS",
    "MarkupTidier",
    "mentions_a_cell",
]

logger = logging.getLogger(__name__)

CONTROL_WORDS = frozenset({"control", "ctrl", "none", "", CONTROL_PERT})
_CELL_REFERENCE_RE = re.compile(r"\b(this|that|the|these|those|my|selected)\s+cells?\b", re.I)
_PAIRED_RE = re.compile(
    "|".join(re.escape(t) for t in (CELL_START, CELL_END, PERT_START, PERT_END))
)
_OPENING = {CELL_END: CELL_START, PERT_END: PERT_START}
_PERT_RE = re.compile(re.escape(PERT_START) + r"(.*?)(?:" + re.escape(PERT_END) + r"|$)", re.S)


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class ParsedPerturbation:
    """A perturbation named by the model: targets, or control."""

    targets: tuple[str, ...]
    control: bool
    found: bool

    @property
    def label(self) -> str:
        """``"KLF1+CEBPA"``, ``"control"`` or ``""`` when no perturbation was written."""
        return "control" if self.control else "+".join(self.targets)


class TaskPrompts:
    """Render the tuned tasks' prompts (first paraphrase of each template).

    Parameters
    ----------
    context_kind
        ``"cell_type"`` or ``"cell_line"``: how the training data called the cell context.
    templates_dir
        A directory of template files replacing the packaged ones (as ``sft.templates_dir``).
    manifest
        The model's data manifest; its template checksums are compared with the loaded ones.
    """

    def __init__(
        self,
        *,
        context_kind: str = "cell_type",
        templates_dir: str | Path | None = None,
        manifest: Mapping | None = None,
    ):
        from cellrlhf.data.task_templates import TASKS, load_phrases, load_task_templates

        self.templates = {task: load_task_templates(task, templates_dir) for task in TASKS}
        self.phrases = load_phrases(templates_dir)
        if context_kind not in self.phrases.context_nouns:
            context_kind = "cell_type"
        self.context_kind = context_kind
        self._check_manifest(manifest or {})

    def _check_manifest(self, manifest: Mapping) -> None:
        recorded = manifest.get("templates") or manifest.get("task_templates")
        if not isinstance(recorded, Mapping):
            return
        for task, entry in recorded.items():
            digest = entry.get("sha256") if isinstance(entry, Mapping) else None
            mine = self.templates.get(task)
            if digest and mine is not None and digest != mine.sha256:
                logger.warning(
                    "the model was trained with different %r templates (sha256 %s..., installed "
                    "%s...); prompts may not match its training. Pass templates_dir= with the "
                    "templates it was trained on.",
                    task,
                    str(digest)[:12],
                    mine.sha256[:12],
                )

    # ------------------------------------------------------------------ rendering
    @property
    def context_noun(self) -> str:
        return self.phrases.context_nouns[self.context_kind]

    def system(self, task: str = "cell_annotation") -> str:
        return self.templates[task].variants["system"][0]

    @property
    def chat_system(self) -> str:
        """System prompt of free conversations: the one that introduces both cell and
        perturbation markup."""
        return self.system("perturbation_response")

    def _messages(
        self, task: str, values: Mapping[str, str], *, variant: str = "user"
    ) -> list[dict]:
        tpl = self.templates[task]
        user = tpl.variants[variant][0].format_map(dict(values))
        return [
            {"role": "system", "content": tpl.variants["system"][0]},
            {"role": "user", "content": user},
        ]

    def _perturbation_values(
        self, targets: Sequence[str], perturbation_type: str | None, known: set[str] | None
    ) -> dict[str, str]:
        phrase = self.phrases.perturbation_phrase(perturbation_type or "other")
        control = not targets
        return {
            "perturbation": format_perturbation(targets, known=known, control=control),
            "perturbation_phrase": phrase,
            "perturbation_phrase_capitalized": _capitalized(phrase),
            "perturbation_type": perturbation_type or "other",
        }

    def annotation(self, sentence: str) -> list[dict]:
        """Ask for the cell type / line of a cell."""
        return self._messages(
            "cell_annotation",
            {"cell": format_cell(sentence), "context_noun": self.context_noun},
        )

    def generation(self, cell_context: str) -> list[dict]:
        """Ask for one cell of ``cell_context``."""
        return self._messages(
            "cell_generation", {"cell_context": cell_context, "context_noun": self.context_noun}
        )

    def perturbation_response(
        self,
        control_sentence: str | None,
        targets: Sequence[str],
        *,
        cell_context: str,
        perturbation_type: str | None = None,
        known: set[str] | None = None,
    ) -> list[dict]:
        """Ask for the cell after perturbing ``targets`` (a control cell given, or not)."""
        description = self.phrases.control_descriptions["control_cell"].format(
            cell_context=cell_context
        )
        values = {
            "cell_context": cell_context,
            "context_noun": self.context_noun,
            "control_description": description,
            "control_description_capitalized": _capitalized(description),
            **self._perturbation_values(targets, perturbation_type, known),
        }
        if control_sentence is None:
            return self._messages("perturbation_response", values, variant="user_without_control")
        values["control"] = format_cell(control_sentence)
        return self._messages("perturbation_response", values)

    def perturbation_effect(
        self,
        targets: Sequence[str],
        *,
        cell_context: str,
        perturbation_type: str | None = None,
        known: set[str] | None = None,
    ) -> list[dict]:
        """Ask which genes go up and down after the perturbation."""
        values = {
            "cell_context": cell_context,
            "context_noun": self.context_noun,
            **self._perturbation_values(targets, perturbation_type, known),
        }
        return self._messages("perturbation_effect", values)

    def perturbation_identification(
        self, sentence: str, *, cell_context: str, perturbation_type: str | None = None
    ) -> list[dict]:
        """Ask which perturbation a cell received."""
        values = {
            "cell": format_cell(sentence),
            "cell_context": cell_context,
            "context_noun": self.context_noun,
            **self._perturbation_values(["x"], perturbation_type, None),
        }
        return self._messages("perturbation_identification", values)

    def question(self, sentence: str | None, text: str) -> list[dict]:
        """A free question, about a cell when ``sentence`` is given (cell on its own line)."""
        text = text.strip()
        content = f"{text}\n{format_cell(sentence)}" if sentence is not None else text
        return [
            {"role": "system", "content": self.chat_system},
            {"role": "user", "content": content},
        ]

    def annotation_answer(self, label: str) -> str:
        """The answer the model was trained to give for ``label``."""
        return self.templates["cell_annotation"].variants["assistant"][0].format(cell_context=label)

    @property
    def empty_list_word(self) -> str:
        return str(self.templates["perturbation_effect"].extra.get("empty_list", "none"))


def mentions_a_cell(question: str) -> bool:
    """Whether ``question`` is about a particular cell ("this cell", "the cells", ...): such a
    question needs a selected cell, or the model answers about nothing."""
    return _CELL_REFERENCE_RE.search(str(question)) is not None


class MarkupTidier:
    """Drop closing markup (``</cell>``, ``</pert>``) that has no opening tag before it.

    A model asked without a cell can end its answer with a stray ``</pert>`` (``"No changes
    </pert>"``): markup of its training answers, meaningless to a reader. Feed the answer's text
    pieces in order (streamed answers arrive in whole words and tags); a balanced
    ``<cell> ... </cell>`` or ``<pert> ... </pert>`` is kept as it is.
    """

    def __init__(self) -> None:
        self._open = {CELL_START: False, PERT_START: False}

    def feed(self, piece: str) -> str:
        """The tidied ``piece``."""
        out, pos = [], 0
        for match in _PAIRED_RE.finditer(piece):
            out.append(piece[pos : match.start()])
            pos = match.end()
            tag = match.group()
            opener = _OPENING.get(tag)
            if opener is None:
                self._open[tag] = True
                out.append(tag)
            elif self._open[opener]:
                self._open[opener] = False
                out.append(tag)
        out.append(piece[pos:])
        return "".join(out)


# ---------------------------------------------------------------------- parsing
def parse_label(text: str) -> str:
    """The label in a text answer: whitespace collapsed, surrounding punctuation stripped."""
    text = " ".join(str(text).split())
    return re.sub(r"^[\s\W_]+|[\s\W_]+$", "", text)


def parse_effect(text: str, *, empty_word: str = "none") -> tuple[list[str], list[str]] | None:
    """``(up, down)`` gene lists of an answer ``"Up: A, B\\nDown: C"``; ``None`` when the
    answer has neither line (e.g. ``"No gene changes significantly."`` gives ``([], [])``)."""
    if re.search(r"no gene", text, re.I) and not re.search(r"^\s*up\s*:", text, re.I | re.M):
        return [], []
    lists: dict[str, list[str]] = {}
    for key in ("up", "down"):
        match = re.search(rf"^\s*{key}\s*:(.*)$", text, re.I | re.M)
        if match:
            words = [w for w in re.split(r"[\s,;]+", match.group(1)) if w]
            lists[key] = [w for w in words if w.lower() != empty_word.lower()]
    if not lists:
        return None
    return lists.get("up", []), lists.get("down", [])


def parse_perturbation(text: str) -> ParsedPerturbation:
    """The perturbation in an answer ``"<pert> KLF1 CEBPA </pert>"`` (or ``<control>``)."""
    match = _PERT_RE.search(str(text))
    if match is None:
        words = split_perturbation(str(text).strip())
        if len(words) == 1 and words[0].lower() in CONTROL_WORDS:
            return ParsedPerturbation((), control=True, found=False)
        return ParsedPerturbation(tuple(words), control=False, found=False)
    words = match.group(1).split()
    if CONTROL_PERT in words:
        return ParsedPerturbation((), control=True, found=True)
    return ParsedPerturbation(tuple(w for w in words if w != UNK_PERT), control=False, found=True)
