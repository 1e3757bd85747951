import json
from importlib import resources

import numpy as np
import pytest

from cellrlhf.cell2text.markup import extract_cell
from cellrlhf.data.prompts import PromptWriter
from cellrlhf.data.schema import PERTURBATION_TYPES
from cellrlhf.data.task_templates import (
    TASKS,
    TemplateError,
    load_phrases,
    load_task_templates,
    placeholders,
)


@pytest.fixture(scope="module")
def writer():
    templates = {task: load_task_templates(task) for task in TASKS}
    return PromptWriter(templates, load_phrases(), "cell_line")


def test_every_task_has_versioned_paraphrases():
    for task in TASKS:
        templates = load_task_templates(task)
        assert isinstance(templates.version, int) and templates.version >= 1
        assert templates.count("user") >= 4, task
        assert len(templates.sha256) == 64
    phrases = load_phrases()
    assert set(PERTURBATION_TYPES) <= set(phrases.perturbation_phrases)


def _all_indices(writer, render, task, variant="user"):
    """Render until every paraphrase of the variant was used; return the messages seen."""
    count = writer.templates[task].count(variant)
    seen = {}
    rng = np.random.default_rng(0)
    for _ in range(400):
        messages, template_id = render(rng)
        seen.setdefault(template_id.split("/")[-1], messages)
        used = {key.split("u")[1].split("a")[0] for key in seen}
        if len(used) == count:
            return list(seen.values())
    raise AssertionError(f"{task}: not every {variant} paraphrase was drawn")


def test_cell_tasks_render_every_paraphrase(writer):
    for task in ("cell_annotation", "perturbation_identification"):
        seen = _all_indices(
            writer,
            lambda rng, task=task: writer.cell_task(
                task, "CD3E CD8A", "K562", "KLF1+CEBPA", "CRISPRa", rng
            ),
            task,
        )
        for messages in seen:
            assert [m["role"] for m in messages] == ["system", "user", "assistant"]
            user = messages[1]["content"]
            assert extract_cell(user).sentence == "CD3E CD8A", user
            assert "{" not in user and "}" not in user
        answer = seen[0][2]["content"]
        assert answer == ("K562" if task == "cell_annotation" else "<pert> KLF1 CEBPA </pert>")


def test_generation_and_response_render_every_paraphrase(writer):
    for messages in _all_indices(
        writer,
        lambda rng: writer.cell_task("cell_generation", "A B", "T98G", "control", "none", rng),
        "cell_generation",
    ):
        assert "T98G" in messages[1]["content"]
        assert messages[2]["content"] == "<cell> A B </cell>"
    for mode in ("control_cell", "pseudobulk", "none"):
        variant = "user_without_control" if mode == "none" else "user"
        seen = _all_indices(
            writer,
            lambda rng, mode=mode: writer.response(
                cell_context="K562",
                perturbation="KLF1",
                perturbation_type="CRISPRi",
                control_sentence="G1 G2 G3",
                context_mode=mode,
                rng=rng,
                answer_sentence="G3 G1",
            ),
            "perturbation_response",
            variant,
        )
        for messages in seen:
            user = messages[1]["content"]
            assert "<pert> KLF1 </pert>" in user and "interference" in user
            if mode == "none":
                assert "<cell>" not in user
            else:
                assert extract_cell(user).sentence == "G1 G2 G3"
            assert messages[2]["content"] == "<cell> G3 G1 </cell>"


def test_rl_prompt_has_no_answer(writer):
    prompt, _ = writer.response(
        cell_context="K562",
        perturbation="A+B",
        perturbation_type="CRISPRa",
        control_sentence="G1",
        context_mode="pseudobulk",
        rng=np.random.default_rng(0),
        answer_sentence=None,
    )
    assert [m["role"] for m in prompt] == ["system", "user"]
    assert "pseudo-bulk" in prompt[1]["content"]


def test_effect_answers(writer):
    rng = np.random.default_rng(0)
    messages, _ = writer.effect(
        cell_context="K562",
        perturbation="KLF1",
        perturbation_type="CRISPRa",
        up=["HBG1", "HBG2"],
        down=[],
        rng=rng,
    )
    assert messages[2]["content"] == "Up: HBG1 HBG2\nDown: none"
    messages, _ = writer.effect(
        cell_context="K562",
        perturbation="KLF1",
        perturbation_type="CRISPRa",
        up=[],
        down=[],
        rng=rng,
    )
    assert messages[2]["content"] == "No gene changes significantly."


def test_custom_templates_are_validated(tmp_path):
    packaged = resources.files("cellrlhf.data") / "templates" / "cell_annotation.json"
    payload = json.loads(packaged.read_text())
    payload["user"] = ["What is this? (no cell here)"]
    (tmp_path / "cell_annotation.json").write_text(json.dumps(payload))
    with pytest.raises(TemplateError, match="lacks required placeholder"):
        load_task_templates("cell_annotation", tmp_path)
    payload["user"] = ["Cell: {cell}"]
    payload["version"] = 7
    (tmp_path / "cell_annotation.json").write_text(json.dumps(payload))
    assert load_task_templates("cell_annotation", tmp_path).version == 7
    with pytest.raises(TemplateError, match="has no perturbation_effect.json"):
        load_task_templates("perturbation_effect", tmp_path)


def test_placeholders():
    assert placeholders("a {x} b {y}") == {"x", "y"}
    with pytest.raises(TemplateError):
        placeholders("broken {x")
