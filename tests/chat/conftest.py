"""Session fixtures of the chat tests: the CellLM of the tiny model (``tiny_model_dir``, in
tests/conftest.py) and its example cells."""

from __future__ import annotations

import pytest

from tests.fixtures.tiny_cell_model import pbmc_cells


@pytest.fixture(scope="session")
def lm(tiny_model_dir):
    from cellrlhf.chat import CellLM

    return CellLM.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def pbmc():
    """The example cells (the tiny model's training cells)."""
    return pbmc_cells()
