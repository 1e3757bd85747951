"""DeepSpeed ZeRO-2 and ZeRO-3 for real: `accelerate launch sft.py` with 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file
from sft_helpers import REPO, run_subprocess

from cellrlhf.sft.model_dir import load_cell_model

pytest.importorskip("deepspeed")


def _launch(config: str, tiny_data, out, *extra: str):
    return run_subprocess(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(REPO / "configs" / "accelerate" / config),
            "--num_processes",
            "2",
            "--mixed_precision",
            "no",
            "sft.py",
            "--config",
            "configs/sft/tiny.yaml",
            "--dataset_dir",
            str(tiny_data),
            "--output_dir",
            str(out),
            "--ddp_backend",
            "gloo",
            "--max_steps",
            "3",
            "--logging_steps",
            "1",
            "--per_device_train_batch_size",
            "2",
            "--eval_generation_samples",
            "3",
            "--eval_fidelity_perturbations",
            "0",
            *extra,
        ]
    )


def _check_run(out):
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [e["loss"] for e in state["log_history"] if "loss" in e]
    metrics = json.loads((out / "eval_results.json").read_text())
    assert "eval_perplexity" in metrics and "eval_gen_valid_gene_fraction" in metrics
    info = json.loads((out / "cellrlhf.json").read_text())
    assert info["stage"] == "sft"


@pytest.mark.slow
def test_zero2_two_processes(tiny_data, pretrained, tmp_path):
    out = tmp_path / "zero2"
    _launch(
        "deepspeed_zero2.yaml",
        tiny_data,
        out,
        "--model_config",
        "none",
        "--model_name_or_path",
        str(pretrained),
    )
    _check_run(out)
    before = load_file(str(pretrained / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert set(before) <= set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    if "lm_head.weight" in after:  # DeepSpeed's gathered state dict lists the tied head too
        torch.testing.assert_close(after["lm_head.weight"], after["model.embed_tokens.weight"])
    model, tokenizer, _ = load_cell_model(out)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


@pytest.mark.slow
def test_zero3_two_processes_saves_full_safetensors(tiny_data, tmp_path):
    out = tmp_path / "zero3"
    _launch(
        "deepspeed_zero3.yaml",
        tiny_data,
        out,
        "--model_config",
        str(REPO / "configs" / "model" / "tiny.yaml"),
    )
    _check_run(out)
    weights = load_file(str(out / "model.safetensors"))
    model, tokenizer, _ = load_cell_model(out)
    # ZeRO-3 shards are gathered at save (zero3_save_16bit_model): full shapes, not empty stubs
    expected = {k: v.shape for k, v in model.state_dict().items() if k in weights}
    assert expected and all(
        weights[k].shape == shape and weights[k].numel() > 0 for k, shape in expected.items()
    )
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), 32)
