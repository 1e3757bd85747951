"""Fill task templates with cells, perturbations and contexts (shared by SFT and RL builders)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cellrlhf.cell2text.markup import format_cell, format_perturbation
from cellrlhf.data.schema import CONTROL_LABEL, perturbation_targets
from cellrlhf.data.task_templates import Phrases, TaskTemplates

__all__ = ["PromptWriter"]


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class PromptWriter:
    """Renders examples of every task.

    Attributes
    ----------
    templates
        Task name -> :class:`~cellrlhf.data.task_templates.TaskTemplates`.
    phrases
        Words for perturbation types and control descriptions.
    context_noun
        ``"cell_type"`` or ``"cell_line"``.
    """

    templates: Mapping[str, TaskTemplates]
    phrases: Phrases
    context_noun: str = "cell_type"

    @staticmethod
    def perturbation_text(perturbation: str) -> str:
        """``"A+B"`` -> ``"<pert> A B </pert>"``; the control label -> ``<pert> <control> </pert>``."""
        if perturbation == CONTROL_LABEL:
            return format_perturbation([], control=True)
        return format_perturbation(perturbation_targets(perturbation))

    def _base(self, cell_context: str, perturbation: str, perturbation_type: str) -> dict:
        phrase = self.phrases.perturbation_phrase(perturbation_type)
        return {
            "cell_context": cell_context,
            "context_noun": self.phrases.context_nouns.get(self.context_noun, "cell type"),
            "perturbation": self.perturbation_text(perturbation) if perturbation else "",
            "perturbation_type": perturbation_type,
            "perturbation_phrase": phrase,
            "perturbation_phrase_capitalized": _capitalize(phrase),
        }

    def cell_task(
        self,
        task: str,
        sentence: str,
        cell_context: str,
        perturbation: str,
        perturbation_type: str,
        rng,
    ):
        """``cell_annotation``, ``cell_generation`` or ``perturbation_identification``."""
        values = self._base(cell_context, perturbation, perturbation_type)
        values["cell"] = format_cell(sentence)
        return self.templates[task].render(values, rng)

    def response(
        self,
        *,
        cell_context: str,
        perturbation: str,
        perturbation_type: str,
        control_sentence: str | None,
        context_mode: str,
        rng: np.random.Generator,
        answer_sentence: str | None,
    ):
        """A ``perturbation_response`` example; ``answer_sentence=None`` gives the prompt only."""
        values = self._base(cell_context, perturbation, perturbation_type)
        if context_mode == "none":
            user = "user_without_control"
        else:
            description = self.phrases.control_descriptions[context_mode].format(
                cell_context=cell_context
            )
            values["control"] = format_cell(control_sentence or "")
            values["control_description"] = description
            values["control_description_capitalized"] = _capitalize(description)
            user = "user"
        if answer_sentence is None:
            return self.templates["perturbation_response"].render(
                values, rng, user=user, assistant=None
            )
        values["cell"] = format_cell(answer_sentence)
        return self.templates["perturbation_response"].render(values, rng, user=user)

    def effect(
        self,
        *,
        cell_context: str,
        perturbation: str,
        perturbation_type: str,
        up: list[str],
        down: list[str],
        rng: np.random.Generator,
    ):
        """A ``perturbation_effect`` example (answer from the DE test)."""
        templates = self.templates["perturbation_effect"]
        values = self._base(cell_context, perturbation, perturbation_type)
        empty = templates.extra.get("empty_list", "none")
        values["up"] = " ".join(up) if up else empty
        values["down"] = " ".join(down) if down else empty
        assistant = "assistant" if (up or down) else "assistant_no_effect"
        return templates.render(values, rng, assistant=assistant)
