"""Session fixtures of the sft tests: a tiny dataset and tiny models, each trained once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sft_helpers import train

from tests.fixtures.tiny_data import write_tiny_dataset
from tests.fixtures.tiny_model import tiny_args


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("sft_data") / "data")


@pytest.fixture(scope="session")
def pretrained(tiny_data, tmp_path_factory) -> Path:
    """A tiny model pretrained through the ``cellrlhf pretrain`` CLI door (YAML + overrides)."""
    from cellrlhf.cli import main

    out = tmp_path_factory.mktemp("pretrain") / "model"
    argv = tiny_args(
        "pretrain", tiny_data, out, "--max_steps", "30", "--eval_holdout_fraction", "0.25"
    )
    assert main(["pretrain", *argv]) == 0
    return out


@pytest.fixture(scope="session")
def sft_run(pretrained, tiny_data, tmp_path_factory):
    """SFT of the pretrained tiny model, evaluated before and after training."""
    out = tmp_path_factory.mktemp("sft") / "model"
    argv = tiny_args(
        "sft",
        tiny_data,
        out,
        "--model_config",
        "none",
        "--model_name_or_path",
        str(pretrained),
        "--max_steps",
        "24",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "24",
        "--eval_on_start",
        "true",
    )
    return train("sft", argv)


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
