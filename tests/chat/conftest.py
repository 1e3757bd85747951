"""Session fixtures of the chat tests: a tiny trained model directory and its CellLM."""

from __future__ import annotations

import pytest
from tiny_cell_model import build_tiny_model, pbmc_cells


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny model directory (saved-model contract), trained once per session."""
    return build_tiny_model(tmp_path_factory.getbasetemp() / "tiny_cell_model")


@pytest.fixture(scope="session")
def lm(tiny_model_dir):
    from cellrlhf.chat import CellLM

    return CellLM.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def pbmc():
    """The example cells (the tiny model's training cells)."""
    return pbmc_cells()
