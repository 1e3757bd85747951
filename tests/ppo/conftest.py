"""Fixtures of the RL stage tests: a tiny data set, an SFT model trained on it, a reward model.

The chain is real where the stages exist: the SFT model is trained by ``cellrlhf.sft`` on the
tiny data set (seconds); the reward model is the SFT backbone with a fresh, seeded one-label
head, saved in the model directory contract (PPO only needs such a directory).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny_rl_data import write_tiny_rl_dataset

from tests.fixtures.tiny_model import train_tiny_sft


@pytest.fixture(scope="session")
def rl_dataset_dir(tmp_path_factory) -> Path:
    """The tiny data set directory (``sft/`` and ``rl/`` train / test)."""
    return write_tiny_rl_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def sft_model_dir(rl_dataset_dir, tmp_path_factory) -> Path:
    """A tiny model instruction-tuned by the SFT stage on the tiny data set."""
    return train_tiny_sft(rl_dataset_dir, tmp_path_factory.mktemp("sft") / "model", steps=40)


@pytest.fixture(scope="session")
def reward_model_dir(sft_model_dir, tmp_path_factory) -> Path:
    """A reward model directory: the SFT backbone with a seeded one-label ``score`` head."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("reward") / "model"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(sft_model_dir), num_labels=1, use_safetensors=True
    )
    tokenizer = AutoTokenizer.from_pretrained(str(sft_model_dir))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    for name in ("gene_vocab.json", "expression_decoder.json", "data_manifest.json"):
        shutil.copy2(sft_model_dir / name, out / name)
    info = json.loads((sft_model_dir / "cellrlhf.json").read_text())
    info.update(stage="reward", num_labels=1, sft_model=str(sft_model_dir))
    (out / "cellrlhf.json").write_text(json.dumps(info))
    return out


@pytest.fixture(scope="session")
def sft_tokenizer(sft_model_dir):
    from cellrlhf.cell2text.tokenizer import load_cell_tokenizer

    return load_cell_tokenizer(sft_model_dir)


@pytest.fixture(scope="session")
def decoder(rl_dataset_dir):
    from cellrlhf.cell2text.decoder import ExpressionDecoder

    return ExpressionDecoder.load(rl_dataset_dir)
