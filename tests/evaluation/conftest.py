"""Fixtures of the evaluation tests: a simulated dataset built by the data stage and a model
SFT-trained on it for a few steps (built once per session)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from eval_fixtures import build_small_dataset, train_small_model  # noqa: E402


@pytest.fixture(scope="session")
def sim_dataset_dir(tmp_path_factory) -> Path:
    """A simulated dataset (two cell contexts, ``unseen_single`` split, ``rl/`` test prompts)."""
    return build_small_dataset(tmp_path_factory.mktemp("eval_data") / "sim")


@pytest.fixture(scope="session")
def sim_model_dir(sim_dataset_dir, tmp_path_factory) -> Path:
    """A saved model directory trained by the SFT stage on :func:`sim_dataset_dir`."""
    return train_small_model(sim_dataset_dir, tmp_path_factory.mktemp("eval_sft") / "model")


@pytest.fixture(scope="session")
def sim_real_test(sim_dataset_dir):
    """The real test cells of the simulated dataset."""
    from cellrlhf.evaluation.real_data import real_cells

    return real_cells(sim_dataset_dir, "test", progress=False)
