"""Fixtures of the evaluation tests: a simulated dataset built by the data stage and a model
SFT-trained on it for a few steps (built once per session); small synthetic perturbation cells
(:mod:`tests.fixtures.perturbation_cells`) for the scoring tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.perturbation_cells import line_decoder, perturbation_adata  # noqa: F401
from tests.fixtures.sim_data import build_sim_dataset, eval_config
from tests.fixtures.tiny_model import train_tiny_sft


@pytest.fixture(scope="session")
def sim_dataset_dir(tmp_path_factory) -> Path:
    """A simulated dataset (two cell contexts, ``unseen_single`` split, ``rl/`` test prompts)."""
    return build_sim_dataset(tmp_path_factory.mktemp("eval_data") / "sim", eval_config())


@pytest.fixture(scope="session")
def sim_model_dir(sim_dataset_dir, tmp_path_factory) -> Path:
    """A saved model directory trained by the SFT stage on :func:`sim_dataset_dir`."""
    return train_tiny_sft(sim_dataset_dir, tmp_path_factory.mktemp("eval_sft") / "model", steps=30)


@pytest.fixture(scope="session")
def sim_real_test(sim_dataset_dir):
    """The real test cells of the simulated dataset."""
    from cellrlhf.evaluation.real_data import real_cells

    return real_cells(sim_dataset_dir, "test", progress=False)
