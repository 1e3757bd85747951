"""A simulated dataset directory and a tiny SFT model for the preference / reward-model tests.

Simulated biology (all SIMULATED, seeded): 40 measured genes ``G00..G39``; control cells express
``G00..G19`` with decreasing means and never ``G20..G39``. Each perturbation ``T1..T8`` (targets
not measured, as in most real screens) switches on its own block of three genes among
``G20..G39`` and silences two control genes. ``T1..T6`` are training perturbations, ``T7`` and
``T8`` are held out (``unseen_single``). Cell sentences draw ~10 genes with probability
proportional to their mean and rank them by a noisy mean; a global decoder line turns them back
into expression, so every reference is exactly what the data stage would compute.

The SFT model is a 2-layer Llama (hidden size 32) with the project's cell tokenizer, trained for
a few hundred steps to answer the perturbation prompts with real cells: its samples are valid,
varied cell sentences, some better than others. Built once per session (seconds).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cellrlhf.cell2text.markup import format_cell, format_perturbation

GENES = tuple(f"G{i:02d}" for i in range(40))
TRAIN_TARGETS = ("T1", "T2", "T3", "T4", "T5", "T6")
TEST_TARGETS = ("T7", "T8")
CONTEXT = "K562"
N_REFERENCE = 32
SFT_STEPS = 200
SEED = 0


def prompt_messages(target: str) -> list[dict[str, str]]:
    """The RL prompt of a perturbation (one short user turn: the tokenizer spells text by
    characters, see :func:`write_sft_model`)."""
    return [{"role": "user", "content": f"{CONTEXT} {format_perturbation([target])}"}]


def _profiles() -> dict[str, np.ndarray]:
    control = np.zeros(len(GENES))
    control[:20] = np.linspace(2.0, 0.3, 20)
    profiles = {"control": control}
    for k, target in enumerate(TRAIN_TARGETS + TEST_TARGETS):
        mu = control.copy()
        mu[20 + 2 * k : 23 + 2 * k] = 2.6  # its own up block (neighbours share one gene)
        mu[[2 * k, 2 * k + 1]] = 0.05  # two control genes silenced
        profiles[target] = mu
    return profiles


def _cell(mu: np.ndarray, rng: np.random.Generator) -> str:
    expressed = np.flatnonzero(mu > 0)
    n = int(min(len(expressed), rng.integers(8, 13)))
    picked = rng.choice(expressed, size=n, replace=False, p=mu[expressed] / mu[expressed].sum())
    noisy = mu[picked] * np.exp(rng.normal(0, 0.25, n))
    return " ".join(GENES[i] for i in picked[np.argsort(-noisy)])


def _decoder():
    from cellrlhf.cell2text.decoder import ExpressionDecoder
    from cellrlhf.cell2text.vocab import GeneVocab

    return ExpressionDecoder(GeneVocab(GENES), 2.2, -1.6, {"method": "global", "simulated": True})


def _mean_decoded(decoder, sentences: list[str]) -> list[float]:
    X, _ = decoder.decode(sentences)
    return np.asarray(X.mean(axis=0)).ravel().tolist()


def write_rm_dataset(out: Path, *, seed: int = SEED) -> Path:
    """Write the dataset directory (data-stage layout: rl/, splits.json, ...) and return it."""
    from datasets import Dataset, DatasetDict

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    decoder = _decoder()
    decoder.vocab.save(out)
    decoder.save(out)
    profiles = _profiles()
    control_cells = [_cell(profiles["control"], rng) for _ in range(128)]
    control_mean = _mean_decoded(decoder, control_cells)
    cells = {t: [_cell(profiles[t], rng) for _ in range(96)] for t in TRAIN_TARGETS + TEST_TARGETS}

    def rl_rows(targets) -> dict[str, list]:
        rows: dict[str, list] = {
            k: []
            for k in (
                "prompt",
                "perturbation",
                "cell_context",
                "split_kind",
                "reference_perturbed",
                "reference_control",
                "decoded_control",
                "reference_sentences",
                "de_genes_up",
                "de_genes_down",
            )
        }
        for target in targets:
            k = (TRAIN_TARGETS + TEST_TARGETS).index(target)
            rows["prompt"].append(prompt_messages(target))
            rows["perturbation"].append(target)
            rows["cell_context"].append(CONTEXT)
            rows["split_kind"].append("single")
            rows["reference_perturbed"].append(_mean_decoded(decoder, cells[target]))
            rows["reference_control"].append(control_mean)
            rows["decoded_control"].append(control_mean)
            rows["reference_sentences"].append(cells[target][:N_REFERENCE])
            rows["de_genes_up"].append(list(GENES[20 + 2 * k : 23 + 2 * k]))
            rows["de_genes_down"].append([GENES[2 * k], GENES[2 * k + 1]])
        return rows

    DatasetDict(
        {
            "train": Dataset.from_dict(rl_rows(TRAIN_TARGETS)),
            "test": Dataset.from_dict(rl_rows(TEST_TARGETS)),
        }
    ).save_to_disk(str(out / "rl"))
    sft_chats = [
        [*prompt_messages(t), {"role": "assistant", "content": format_cell(s)}]
        for t in TRAIN_TARGETS
        for s in cells[t][N_REFERENCE:]
    ]
    Dataset.from_dict({"messages": sft_chats}).save_to_disk(str(out / "sft_chats"))
    splits = {
        "format": "cellrlhf.splits",
        "version": 1,
        "kind": "unseen_single",
        "test_perturbations": list(TEST_TARGETS),
        "test_targets": list(TEST_TARGETS),
        "test_contexts": [],
    }
    (out / "splits.json").write_text(json.dumps(splits, indent=1))
    manifest = {
        "format": "cellrlhf.dataset",
        "fingerprint": f"rm-tiny-{seed}",
        "simulated": True,
        "perturbation_targets": list(TRAIN_TARGETS + TEST_TARGETS),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def _train_lm(model, tokenizer, chats, *, steps: int, seed: int) -> list[float]:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = []
    for chat in chats:
        prompt = tokenizer.apply_chat_template(
            chat[:-1], tokenize=True, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        full = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
        rows.append((list(full), len(prompt)))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    losses = []
    model.train()
    for step in range(steps):
        batch = [rows[i] for i in rng.choice(len(rows), size=16, replace=False)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (ids, n_prompt) in enumerate(batch):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
            labels[r, n_prompt:width] = torch.tensor(ids[n_prompt:] + [-100] * (width - len(ids)))
        for group in opt.param_groups:
            group["lr"] = 5e-3 * (1 - step / steps) + 2e-4
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    model.eval()
    return losses


def write_sft_model(
    out: Path, dataset_dir: Path, *, steps: int = SFT_STEPS, seed: int = SEED
) -> Path:
    """Train the tiny SFT model on the dataset's chats; write it in the saved-model contract."""
    import shutil

    import torch
    import yaml
    from datasets import load_from_disk

    from cellrlhf.cell2text.tokenizer import build_cell_tokenizer
    from cellrlhf.cell2text.vocab import GeneVocab
    from tests.fixtures.tiny_model import random_llama

    out = Path(out)
    torch.manual_seed(seed)
    chats = list(load_from_disk(str(dataset_dir / "sft_chats"))["messages"])
    # no text corpus: plain text is spelled by characters, which keeps this tokenizer (and the
    # numbers the tests compare between runs) independent of the text-piece fitting
    tokenizer = build_cell_tokenizer(
        GeneVocab.load(dataset_dir), extra_genes=TRAIN_TARGETS + TEST_TARGETS
    )
    model = random_llama(  # initial weights independent of the tests that ran before
        tokenizer,
        seed=seed,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    losses = _train_lm(model, tokenizer, chats, steps=steps, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    for name in ("gene_vocab.json", "expression_decoder.json"):
        shutil.copyfile(dataset_dir / name, out / name)
    shutil.copyfile(dataset_dir / "manifest.json", out / "data_manifest.json")
    (out / "training_config.yaml").write_text(yaml.safe_dump({"steps": steps, "seed": seed}))
    info = {
        "format": "cellrlhf.model",
        "version": 1,
        "stage": "sft",
        "tokenizer_mode": "gene_tokens",
        "base_model": None,
        "perturbation_targets": list(TRAIN_TARGETS + TEST_TARGETS),
        "first_loss": losses[0],
        "final_loss": float(np.mean(losses[-20:])),
    }
    (out / "cellrlhf.json").write_text(json.dumps(info, indent=1))
    return out


# --------------------------------------------------------------------------- pytest fixtures
PREFERENCES_TINY_CONFIG = (
    Path(__file__).resolve().parents[2] / "configs/reward/preferences_tiny.yaml"
)


def _preference_test_settings() -> dict:
    import yaml

    return yaml.safe_load(PREFERENCES_TINY_CONFIG.read_text())


PREFERENCE_TEST_SETTINGS = _preference_test_settings()


def build_preferences_for_tests(sft_dir: Path, dataset_dir: Path, out: Path, **overrides):
    """Preference directory from the tiny SFT model (test settings plus ``overrides``)."""
    from cellrlhf.reward.preference_config import PreferenceConfig
    from cellrlhf.reward.preferences import build_preferences

    config = PreferenceConfig(
        model_name_or_path=str(sft_dir),
        dataset_dir=str(dataset_dir),
        output_dir=str(out),
        **{**PREFERENCE_TEST_SETTINGS, **overrides},
    )
    return build_preferences(config)


def _once(path: Path, marker: str, build) -> Path:
    """Build into ``path`` unless a previous fixture instance already did (``marker`` exists)."""
    if not (path / marker).exists():
        build(path)
    return path


@pytest.fixture(scope="session")
def rm_dataset_dir(tmp_path_factory) -> Path:
    """The simulated dataset directory (see the module docstring)."""
    root = tmp_path_factory.getbasetemp() / "rm_inputs" / "data"
    return _once(root, "manifest.json", write_rm_dataset)


@pytest.fixture(scope="session")
def rm_sft_dir(tmp_path_factory, rm_dataset_dir) -> Path:
    """The tiny SFT model trained on the simulated dataset."""
    root = tmp_path_factory.getbasetemp() / "rm_inputs" / "sft"
    return _once(root, "cellrlhf.json", lambda p: write_sft_model(p, rm_dataset_dir))


@pytest.fixture(scope="session")
def rm_preferences_dir(tmp_path_factory, rm_dataset_dir, rm_sft_dir) -> Path:
    """Preference pairs sampled from the tiny SFT model with the test settings."""
    root = tmp_path_factory.getbasetemp() / "rm_inputs" / "prefs"
    return _once(
        root,
        "manifest.json",
        lambda p: build_preferences_for_tests(rm_sft_dir, rm_dataset_dir, p),
    )
