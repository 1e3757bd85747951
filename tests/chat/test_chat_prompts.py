"""Chat prompts are the data stage's training prompts, and answers parse back."""

from __future__ import annotations

import re

import pytest

from cellrlhf.chat.prompts import TaskPrompts, parse_effect, parse_label, parse_perturbation
from cellrlhf.data.prompts import PromptWriter
from cellrlhf.data.task_templates import TASKS, load_phrases, load_task_templates


class _FirstParaphrase:
    """An rng for PromptWriter that always picks paraphrase 0 (what the chat uses)."""

    def integers(self, n):
        return 0


@pytest.fixture(scope="module")
def writer():
    return PromptWriter({t: load_task_templates(t) for t in TASKS}, load_phrases())


@pytest.fixture(scope="module")
def prompts():
    return TaskPrompts()


def test_annotation_prompt_is_the_training_prompt(writer, prompts):
    expected, _ = writer.cell_task(
        "cell_annotation", "CD3E CD8A", "T cell", "", "none", _FirstParaphrase()
    )
    assert prompts.annotation("CD3E CD8A") == expected[:2]
    assert prompts.annotation_answer("T cell") == expected[2]["content"] == "T cell"


def test_generation_prompt_is_the_training_prompt(writer, prompts):
    expected, _ = writer.cell_task("cell_generation", "A B", "K562", "", "none", _FirstParaphrase())
    assert prompts.generation("K562") == expected[:2]


@pytest.mark.parametrize("with_control", [True, False])
def test_perturbation_response_prompt_is_the_training_prompt(writer, prompts, with_control):
    expected, _ = writer.response(
        cell_context="K562",
        perturbation="CEBPA+KLF1",
        perturbation_type="CRISPRa",
        control_sentence="GATA1 HBB" if with_control else None,
        context_mode="control_cell" if with_control else "none",
        rng=_FirstParaphrase(),
        answer_sentence=None,
    )
    got = prompts.perturbation_response(
        "GATA1 HBB" if with_control else None,
        ["CEBPA", "KLF1"],
        cell_context="K562",
        perturbation_type="CRISPRa",
    )
    assert got == expected
    assert "<pert> CEBPA KLF1 </pert>" in got[1]["content"]
    assert "CRISPR activation of" in got[1]["content"]


def test_effect_and_identification_prompts_are_the_training_prompts(writer, prompts):
    expected, _ = writer.effect(
        cell_context="K562",
        perturbation="KLF1",
        perturbation_type="knockout",
        up=["HBB"],
        down=[],
        rng=_FirstParaphrase(),
    )
    got = prompts.perturbation_effect(["KLF1"], cell_context="K562", perturbation_type="knockout")
    assert got == expected[:2]
    assert parse_effect(expected[2]["content"]) == (["HBB"], [])

    expected, _ = writer.cell_task(
        "perturbation_identification", "HBB GATA1", "K562", "KLF1", "CRISPRi", _FirstParaphrase()
    )
    got = prompts.perturbation_identification(
        "HBB GATA1", cell_context="K562", perturbation_type="CRISPRi"
    )
    assert got == expected[:2]
    assert parse_perturbation(expected[2]["content"]).label == "KLF1"


def test_unknown_targets_are_written_unk_pert(prompts):
    got = prompts.perturbation_response(
        "A B", ["KLF1", "NOVEL9"], cell_context="K562", known={"KLF1"}
    )
    assert "<pert> KLF1 <unk_pert> </pert>" in got[1]["content"]


def test_control_perturbation_and_parsers():
    assert parse_perturbation("<pert> <control> </pert>").control
    assert parse_perturbation("<pert> <control> </pert>").label == "control"
    assert parse_perturbation("<pert> A B </pert> trailing").targets == ("A", "B")
    assert parse_perturbation("<pert> A B").targets == ("A", "B")  # unclosed
    assert parse_perturbation("KLF1+CEBPA").targets == ("KLF1", "CEBPA")
    assert parse_label("  CD14+ Monocyte. ") == "CD14+ Monocyte"
    assert parse_effect("Up: A B, C\nDown: none") == (["A", "B", "C"], [])
    assert parse_effect("No gene changes significantly.") == ([], [])
    assert parse_effect("gibberish") is None


def test_free_question_puts_the_cell_on_its_own_line(prompts):
    msgs = prompts.question("CD3E CD8A", "What is this cell?")
    assert msgs[0]["role"] == "system" and "<cell>" in msgs[0]["content"]
    assert msgs[1]["content"] == "What is this cell?\n<cell> CD3E CD8A </cell>"
    assert prompts.question(None, "hi")[1]["content"] == "hi"


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        (["No ", "changes ", "</pert>"], "No changes"),  # the leak seen with no cell selected
        (["<cell> ", "CD3E ", "CD8A ", "</cell>"], "<cell> CD3E CD8A </cell>"),
        (["</cell> ", "<pert> ", "KLF1 ", "</pert> ", "</pert>"], "<pert> KLF1 </pert>"),
        (["Up: A\nDown: B"], "Up: A\nDown: B"),
    ],
)
def test_markup_tidier_drops_only_closing_tags_without_their_opening(pieces, expected):
    from cellrlhf.chat.prompts import MarkupTidier

    tidier = MarkupTidier()
    text = "".join(tidier.feed(p) for p in pieces)
    assert re.sub(" +", " ", text).strip() == expected


@pytest.mark.parametrize(
    ("question", "about_a_cell"),
    [
        ("What happens to this cell if KLF1 is activated?", True),
        ("What type are these cells?", True),
        ("Is the cell cycling?", True),
        ("Generate a K562 cell.", False),
        ("Which genes go up after KLF1 activation in K562?", False),
    ],
)
def test_questions_about_a_selected_cell_are_recognised(question, about_a_cell):
    from cellrlhf.chat.prompts import mentions_a_cell

    assert mentions_a_cell(question) is about_a_cell
