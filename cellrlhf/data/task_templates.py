"""Chat templates of the instruction tasks: versioned JSON package data, several paraphrases each.

Each task has a file ``cellrlhf/data/templates/<task>.json``::

    {"format": "cellrlhf.task_templates", "version": 1, "task": "...",
     "system": [...], "user": [...], "assistant": [...],
     "required": {"user": ["cell"], "assistant": ["cell_context"]}}

Every example draws one system and one user paraphrase with the build's seeded generator; the
template files' versions and sha256 go into the dataset manifest. ``phrases.json`` holds the
words that fill templates (how each perturbation type is said, how a control is described).
A directory with files of the same format can replace the packaged ones (``sft.templates_dir``).
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "TASKS",
    "TemplateError",
    "TaskTemplates",
    "Phrases",
    "load_task_templates",
    "load_phrases",
    "placeholders",
]

TASKS = (
    "cell_annotation",
    "cell_generation",
    "perturbation_response",
    "perturbation_effect",
    "perturbation_identification",
)
_FORMAT = "cellrlhf.task_templates"
_PHRASES_FORMAT = "cellrlhf.template_phrases"


class TemplateError(ValueError):
    """A template file is malformed or a template cannot be filled."""


def placeholders(template: str) -> set[str]:
    """Names of the ``{placeholders}`` in a template string."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as err:
        raise TemplateError(f"malformed template {template!r}: {err}") from err


def _read(name: str, directory: Path | None) -> tuple[dict, str]:
    if directory is not None:
        path = Path(directory) / name
        if not path.exists():
            raise TemplateError(f"templates_dir {directory} has no {name}.")
        raw = path.read_bytes()
    else:
        raw = resources.files("cellrlhf.data").joinpath("templates", name).read_bytes()
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as err:
        raise TemplateError(f"template file {name} is not valid JSON: {err}") from err
    return payload, hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class TaskTemplates:
    """The templates of one task.

    Attributes
    ----------
    task, version, sha256
        Identity of the template file.
    variants
        Template lists by role and variant: ``"system"``, ``"user"``, ``"assistant"`` and
        task-specific ones (``"user_without_control"``, ``"assistant_no_effect"``).
    required
        Placeholders every template of a variant must contain.
    extra
        Other scalar settings of the file (``"empty_list"``).
    """

    task: str
    version: int
    sha256: str
    variants: Mapping[str, tuple[str, ...]]
    required: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role in ("system", "user", "assistant"):
            if not self.variants.get(role):
                raise TemplateError(f"templates of {self.task!r} need a non-empty {role!r} list.")
        for variant, names in self.required.items():
            if variant not in self.variants:
                raise TemplateError(f"{self.task!r}: 'required' names unknown variant {variant!r}.")
            for template in self.variants[variant]:
                lacking = set(names) - placeholders(template)
                if lacking:
                    raise TemplateError(
                        f"{self.task!r} {variant} template {template!r} lacks required "
                        f"placeholder(s) {sorted(lacking)}."
                    )

    def render(
        self,
        values: Mapping[str, str],
        rng: np.random.Generator,
        *,
        user: str = "user",
        assistant: str | None = "assistant",
    ) -> tuple[list[dict[str, str]], str]:
        """Messages of one example and the id of the templates used.

        Parameters
        ----------
        values
            Placeholder values.
        rng
            Draws the system and user paraphrases (and the answer paraphrase).
        user, assistant
            Variants to use; ``assistant=None`` renders a prompt only (system + user).

        Returns
        -------
        ``([{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}],
        "<task>/v<version>/s<i>u<j>a<k>")``
        """
        roles = [("system", "system"), ("user", user)]
        if assistant is not None:
            roles.append(("assistant", assistant))
        messages: list[dict[str, str]] = []
        ids = []
        for role, variant in roles:
            options = self.variants.get(variant)
            if not options:
                raise TemplateError(f"templates of {self.task!r} have no {variant!r} variant.")
            index = int(rng.integers(len(options))) if len(options) > 1 else 0
            ids.append(f"{role[0]}{index}")
            try:
                content = options[index].format_map(values)
            except KeyError as err:
                raise TemplateError(
                    f"{self.task!r} {variant} template {index} needs placeholder {err} that the "
                    f"builder does not provide (it provides {sorted(values)})."
                ) from None
            messages.append({"role": role, "content": content})
        return messages, f"{self.task}/v{self.version}/{''.join(ids)}"

    def count(self, variant: str) -> int:
        return len(self.variants.get(variant, ()))


def load_task_templates(task: str, directory: str | Path | None = None) -> TaskTemplates:
    """Load and validate the templates of ``task`` (packaged, or from ``directory``)."""
    if task not in TASKS:
        raise TemplateError(f"unknown task {task!r}; tasks: {TASKS}.")
    payload, digest = _read(f"{task}.json", Path(directory) if directory else None)
    if payload.get("format") != _FORMAT:
        raise TemplateError(f"{task}.json: format must be {_FORMAT!r}.")
    if payload.get("task") != task:
        raise TemplateError(f"{task}.json declares task {payload.get('task')!r}.")
    if not isinstance(payload.get("version"), int):
        raise TemplateError(f"{task}.json needs an integer 'version'.")
    variants = {
        key: tuple(value)
        for key, value in payload.items()
        if isinstance(value, list) and all(isinstance(v, str) for v in value)
    }
    extra = {k: v for k, v in payload.items() if isinstance(v, str) and k not in {"format", "task"}}
    required = {k: tuple(v) for k, v in (payload.get("required") or {}).items()}
    return TaskTemplates(task, payload["version"], digest, variants, required, extra)


@dataclass(frozen=True)
class Phrases:
    """Words that fill templates (``phrases.json``)."""

    version: int
    sha256: str
    perturbation_phrases: Mapping[str, str]
    control_descriptions: Mapping[str, str]
    context_nouns: Mapping[str, str]

    def perturbation_phrase(self, perturbation_type: str) -> str:
        return self.perturbation_phrases.get(perturbation_type, self.perturbation_phrases["other"])


def load_phrases(directory: str | Path | None = None) -> Phrases:
    """Load ``phrases.json`` (packaged, or from ``directory`` when it has one)."""
    use_dir = Path(directory) if directory and (Path(directory) / "phrases.json").exists() else None
    payload, digest = _read("phrases.json", use_dir)
    if payload.get("format") != _PHRASES_FORMAT:
        raise TemplateError(f"phrases.json: format must be {_PHRASES_FORMAT!r}.")
    for key in ("perturbation_phrases", "control_descriptions", "context_nouns"):
        if not isinstance(payload.get(key), dict):
            raise TemplateError(f"phrases.json needs a {key!r} mapping.")
    if "other" not in payload["perturbation_phrases"]:
        raise TemplateError("phrases.json perturbation_phrases needs an 'other' entry.")
    return Phrases(
        version=int(payload["version"]),
        sha256=digest,
        perturbation_phrases=payload["perturbation_phrases"],
        control_descriptions=payload["control_descriptions"],
        context_nouns=payload["context_nouns"],
    )
