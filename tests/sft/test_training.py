"""Pretraining and SFT of tiny models: losses fall, parameters change, saves round-trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from sft_helpers import train

from cellrlhf.sft.model_dir import load_cell_model
from tests.fixtures.tiny_model import tiny_args


def _losses(model_dir) -> list[float]:
    history = json.loads((model_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def _eval_losses(model_dir) -> list[float]:
    history = json.loads((model_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["eval_loss"] for entry in history if "eval_loss" in entry]


def _prompt_ids(tokenizer) -> torch.Tensor:
    messages = [
        {"role": "user", "content": "What cell line is this cell? <cell> HBB KLF1 GATA1 </cell>"}
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return torch.tensor([tokenizer.encode(text, add_special_tokens=False)])


def test_pretraining_loss_falls(pretrained):
    losses = _losses(pretrained)
    assert len(losses) >= 5
    assert losses[-1] < 0.7 * losses[0], losses


def test_pretrained_model_dir_contract(pretrained, tiny_data):
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "gene_vocab.json",
        "expression_decoder.json",
        "data_manifest.json",
        "training_config.yaml",
        "cellrlhf.json",
        "eval_results.json",
    ):
        assert (pretrained / name).is_file(), name
    assert not (pretrained / "training_args.bin").exists()  # no pickles in a model directory
    assert not (pretrained / ".staging").exists()
    info = json.loads((pretrained / "cellrlhf.json").read_text())
    assert info["stage"] == "pretrain"
    assert info["tokenizer_mode"] == "gene_tokens"
    assert info["perturbation_targets"] == ["KLF1", "FOXA1"]
    config = yaml.safe_load((pretrained / "training_config.yaml").read_text())
    assert config["training_arguments"]["max_steps"] == 30  # the CLI override won over the YAML
    assert config["script_arguments"]["dataset_dir"] == str(tiny_data)
    assert json.loads((pretrained / "data_manifest.json").read_text())["fingerprint"] == "tiny-0"
    metrics = json.loads((pretrained / "eval_results.json").read_text())
    assert metrics["eval_perplexity"] == pytest.approx(np.exp(metrics["eval_loss"]))
    assert 0.0 <= metrics["eval_gen_valid_gene_fraction"] <= 1.0
    tokenizer_config = json.loads((pretrained / "tokenizer_config.json").read_text())
    assert tokenizer_config.get("padding_side", "right") == "right"


def test_every_gene_and_target_is_one_token(pretrained):
    from cellrlhf.cell2text.tokenizer import gene_token_ids, load_cell_tokenizer
    from tests.fixtures.tiny_data import GENES

    tokenizer = load_cell_tokenizer(pretrained)
    ids = gene_token_ids(tokenizer, [*GENES, "FOXA1"])
    assert min(ids) >= 0 and len(set(ids)) == len(GENES) + 1
    assert len(tokenizer.encode("<unk_pert>", add_special_tokens=False)) == 1


def test_sft_changes_parameters_and_lowers_eval_loss(sft_run, pretrained):
    before = load_file(str(pretrained / "model.safetensors"))
    after = load_file(str(sft_run.output_dir / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)  # every tensor was trained
    eval_losses = _eval_losses(sft_run.output_dir)
    assert len(eval_losses) >= 2
    assert eval_losses[-1] < 0.9 * eval_losses[0], eval_losses
    info = json.loads((sft_run.output_dir / "cellrlhf.json").read_text())
    assert info["stage"] == "sft" and info["base_model"] == str(pretrained)


def test_sft_logs_generation_metrics(sft_run):
    metrics = sft_run.metrics
    for key in (
        "eval_loss",
        "eval_perplexity",
        "eval_gen_valid_gene_fraction",
        "eval_gen_duplicate_fraction",
        "eval_gen_mean_length",
        "eval_gen_pearson_delta",
    ):
        assert key in metrics, key
    history = json.loads((sft_run.output_dir / "trainer_state.json").read_text())["log_history"]
    logged = [e for e in history if "eval_perplexity" in e]
    assert logged and all("eval_gen_valid_gene_fraction" in e for e in logged)


def test_final_evaluation_reuses_the_evaluation_of_the_last_step(sft_run):
    """eval_steps == max_steps: the trainer evaluated after its last step; no second run."""
    history = json.loads((sft_run.output_dir / "trainer_state.json").read_text())["log_history"]
    last = max(e["step"] for e in history)
    at_last = [e for e in history if e["step"] == last and "eval_loss" in e]
    assert len(at_last) == 1
    saved = json.loads((sft_run.output_dir / "eval_results.json").read_text())
    for key, value in at_last[0].items():
        if key.startswith("eval_"):
            assert saved[key] == pytest.approx(value), key
    assert sft_run.metrics["eval_loss"] == pytest.approx(at_last[0]["eval_loss"])


def test_final_evaluation_evaluates_when_the_last_step_was_not_evaluated():
    from types import SimpleNamespace

    from cellrlhf.sft.training_run import final_evaluation

    calls = []
    trainer = SimpleNamespace(
        args=SimpleNamespace(load_best_model_at_end=False),
        state=SimpleNamespace(
            global_step=10,
            log_history=[{"step": 5, "eval_loss": 2.0}, {"step": 10, "loss": 1.0}],
        ),
        evaluate=lambda: calls.append(1) or {"eval_loss": 1.5},
    )
    assert final_evaluation(trainer) == {"eval_loss": 1.5} and calls == [1]
    trainer.state.log_history.append({"step": 10, "eval_loss": 1.4, "eval_x": 0.5, "epoch": 1.0})
    assert final_evaluation(trainer) == {"eval_loss": 1.4, "eval_x": 0.5, "epoch": 1.0}
    assert calls == [1]
    trainer.args.load_best_model_at_end = True  # weights swapped after the last step
    assert final_evaluation(trainer) == {"eval_loss": 1.5} and calls == [1, 1]


def test_save_load_gives_identical_logits(sft_run):
    model = sft_run.trainer.model
    loaded, tokenizer, info = load_cell_model(sft_run.output_dir)
    ids = _prompt_ids(tokenizer)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        expected = model(ids).logits
        got = loaded(ids).logits
    assert torch.equal(expected, got)
    assert info["tokenizer_mode"] == "gene_tokens"


def test_lora_trains_only_adapters(pretrained, tiny_data, tmp_path):
    out = tmp_path / "lora"
    argv = tiny_args(
        "sft",
        tiny_data,
        out,
        "--model_config",
        "none",
        "--model_name_or_path",
        str(pretrained),
        "--use_peft",
        "true",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "--peft_save",
        "adapter",
        "--max_steps",
        "6",
        "--eval_generation_samples",
        "0",
    )
    result = train("sft", argv)
    model = result.trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base = load_file(str(pretrained / "model.safetensors"))
    state = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in model.state_dict().items()
    }
    frozen = [k for k in base if k in state]
    assert len(frozen) == len(base)
    assert all(torch.equal(base[k], state[k]) for k in frozen)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # zero at init: trained

    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert not (out / "model.safetensors").exists()
    loaded, tokenizer, info = load_cell_model(out)
    assert info["peft"] == "adapter"
    ids = _prompt_ids(tokenizer)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)

    from cellrlhf.data.layout import open_dataset_dir
    from cellrlhf.sft.model_dir import save_model_dir

    merged_dir = tmp_path / "merged"
    with torch.no_grad():
        expected = model(ids).logits
    save_model_dir(
        result.trainer,
        merged_dir,
        info={"stage": "sft", "tokenizer_mode": "gene_tokens"},
        dataset=open_dataset_dir(tiny_data),
        run_config={},
        peft_save="merged",
    )
    merged, _, merged_info = load_cell_model(merged_dir)
    assert merged_info["peft"] == "merged" and not (merged_dir / "adapter_config.json").exists()
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(ids).logits, expected, atol=1e-5, rtol=1e-4)


def test_metrics_reach_report_to_tensorboard(pretrained, tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    argv = tiny_args(
        "sft",
        tiny_data,
        out,
        "--model_config",
        "none",
        "--model_name_or_path",
        str(pretrained),
        "--max_steps",
        "2",
        "--logging_steps",
        "1",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--eval_fidelity_perturbations",
        "0",
        "--report_to",
        "tensorboard",
    )
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "logs"))
    train("sft", argv)
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events
    tags = set()
    for event in events:
        accumulator = EventAccumulator(str(event))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    for tag in ("train/loss", "eval/loss", "eval/perplexity", "eval/gen_valid_gene_fraction"):
        assert tag in tags, sorted(tags)
