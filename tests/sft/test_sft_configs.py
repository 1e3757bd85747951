"""Configs: YAML + flag overrides, model presets, and static checks of GPU-only settings."""

from __future__ import annotations

import pytest
import yaml
from sft_helpers import REPO, parse

ACCELERATE = REPO / "configs" / "accelerate"
TRAINING_YAMLS = sorted(
    [("sft", p) for p in (REPO / "configs" / "sft").glob("*.yaml")]
    + [("pretrain", p) for p in (REPO / "configs" / "pretrain").glob("*.yaml")]
)


def test_yaml_then_flags_override(tmp_path):
    script_args, training_args, model_args = parse(
        "sft",
        [
            "--config",
            str(REPO / "configs" / "sft" / "tiny.yaml"),
            "--dataset_dir",
            str(tmp_path),
            "--learning_rate",
            "0.5",
            "--perturbation_dropout",
            "0.25",
            "--use_peft",
            "true",
            "--lora_target_modules",
            "q_proj",
            "k_proj",
        ],
    )
    assert training_args.learning_rate == 0.5  # flag beats YAML (1e-2)
    assert training_args.max_steps == 10  # from the YAML
    assert training_args.perturbation_dropout == 0.25
    assert training_args.assistant_only_loss is True  # the SFT default
    assert training_args.bf16 is False and training_args.gradient_checkpointing is False
    assert model_args.use_peft and model_args.lora_target_modules == ["q_proj", "k_proj"]
    assert script_args.dataset_dir == str(tmp_path)


def test_pretrain_defaults_pack_and_train_on_everything():
    _, training_args, _ = parse(
        "pretrain", ["--config", str(REPO / "configs" / "pretrain" / "tiny.yaml")]
    )
    assert training_args.packing is True and training_args.assistant_only_loss is False
    assert training_args.perturbation_dropout == 0.0


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--perturbation_dropout", "1.0"], "perturbation_dropout=1.0"),
        (["--model_name_or_path", "x"], "not both"),
        (["--tokenizer_mode", "genes_as_text"], "needs a pretrained tokenizer"),
    ],
)
def test_bad_values_are_refused_with_a_reason(argv, match):
    with pytest.raises(ValueError, match=match):
        parse("sft", ["--config", str(REPO / "configs" / "sft" / "tiny.yaml"), *argv])


def test_unknown_choice_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        parse(
            "sft", ["--config", str(REPO / "configs" / "sft" / "tiny.yaml"), "--peft_save", "both"]
        )
    assert "invalid choice: 'both'" in capsys.readouterr().err


def test_cli_reports_a_missing_dataset_dir(tmp_path, capsys):
    from cellrlhf.cli import main

    rc = main(
        [
            "sft",
            "--config",
            str(REPO / "configs" / "sft" / "tiny.yaml"),
            "--dataset_dir",
            str(tmp_path / "nope"),
        ]
    )
    assert rc == 2
    assert "does not exist; run `cellrlhf data build` first" in capsys.readouterr().err


@pytest.mark.parametrize(("stage", "path"), TRAINING_YAMLS, ids=lambda v: getattr(v, "name", v))
def test_every_training_yaml_parses(stage, path):
    # GPU configs ask for bf16; --use_cpu lets this CPU machine check every other field
    _, training_args, model_args = parse(stage, ["--config", str(path), "--use_cpu", "true"])
    if model_args.model_config:
        assert (REPO / model_args.model_config).is_file()
    gpu = "gpu" in path.name
    assert training_args.bf16 is gpu


@pytest.mark.parametrize(
    ("preset", "low", "high"),
    [
        ("tiny", 1e4, 5e4),
        ("small", 1e6, 3e6),
        ("llama-100m", 7e7, 1.1e8),
        ("llama-400m", 3.3e8, 4.2e8),
        ("llama-1b", 0.9e9, 1.1e9),
    ],
)
def test_model_presets_have_their_size(preset, low, high):
    import torch
    from transformers import AutoModelForCausalLM

    from cellrlhf.sft.model_factory import load_model_config

    class Tok:
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

        def __len__(self):
            return 1000

    config = load_model_config(REPO / "configs" / "model" / f"{preset}.yaml", Tok())
    assert config.vocab_size == 1000 and config.pad_token_id == 0
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    body = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    assert low <= body <= high


def test_model_config_may_not_set_tokenizer_fields(tmp_path):
    from cellrlhf.sft.model_factory import load_model_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("model_type: llama\nvocab_size: 12\n")
    with pytest.raises(ValueError, match="comes from the tokenizer"):
        load_model_config(bad, None)


@pytest.mark.parametrize(
    "name", ["cpu", "multi_gpu", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"]
)
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE / f"{name}.yaml"))
    assert config.compute_environment.value == "LOCAL_MACHINE"
    if name == "cpu":
        assert config.use_cpu and config.mixed_precision == "no"


@pytest.mark.parametrize(
    ("name", "stage", "offload"),
    [
        ("deepspeed_zero2", 2, "none"),
        ("deepspeed_zero3", 3, "none"),
        ("deepspeed_zero3_offload", 3, "cpu"),
    ],
)
def test_deepspeed_settings_validate_with_deepspeeds_own_config(name, stage, offload):
    """What accelerate hands DeepSpeed, with the trainer's 'auto' values filled, must be accepted
    by DeepSpeed's own config classes (GPU-only settings cannot run here)."""
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.runtime.config import DeepSpeedConfig

    settings = yaml.safe_load((ACCELERATE / f"{name}.yaml").read_text())
    assert settings["mixed_precision"] == "bf16"
    plugin = DeepSpeedPlugin(
        **settings["deepspeed_config"], gradient_accumulation_steps=2, gradient_clipping=1.0
    )
    config = dict(plugin.deepspeed_config)
    micro, world = 4, settings["num_processes"]
    config.update(
        train_micro_batch_size_per_gpu=micro,
        train_batch_size=micro * 2 * world,
        bf16={"enabled": True},
        optimizer={
            "type": "AdamW",
            "params": {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.0},
        },
        steps_per_print=10**9,
    )
    config["train_batch_size"] = micro * 2  # DeepSpeedConfig sees a world of one process here
    parsed = DeepSpeedConfig(config)
    assert parsed.zero_optimization_stage == stage
    assert parsed.bfloat16_config.enabled
    zero = parsed.zero_config
    assert zero.offload_optimizer is None or _device(zero.offload_optimizer) == offload
    if offload == "cpu":
        assert _device(zero.offload_param) == "cpu" and _device(zero.offload_optimizer) == "cpu"
    if stage == 3:
        assert zero.gather_16bit_weights_on_model_save  # ZeRO-3 saves safetensors
        assert plugin.zero3_init_flag


def _device(offload) -> str:
    return str(getattr(offload.device, "value", offload.device))


class _Tok:
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __len__(self):
        return 100


def test_model_config_typo_is_an_error_naming_the_known_keys(tmp_path):
    from cellrlhf.sft.model_factory import load_model_config

    bad = tmp_path / "typo.yaml"
    bad.write_text("model_type: llama\nhiden_size: 64\nnum_hidden_layers: 2\n")
    with pytest.raises(ValueError, match=r"unknown model config key\(s\) \['hiden_size'\]") as err:
        load_model_config(bad, _Tok())
    assert "hidden_size" in str(err.value) and "num_hidden_layers" in str(err.value)


def test_model_config_legacy_keys_and_types(tmp_path):
    from cellrlhf.sft.model_factory import load_model_config

    good = tmp_path / "good.yaml"
    good.write_text("model_type: llama\nhidden_size: 32\nrope_theta: 500000.0\n")
    config = load_model_config(good, _Tok())
    assert config.hidden_size == 32 and config.rope_parameters["rope_theta"] == 500000.0
    assert "rope_theta" not in config.to_dict()
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("model_type: llama\nnum_hidden_layers: '2'\n")
    with pytest.raises(ValueError, match="'num_hidden_layers' expected int, got str"):
        load_model_config(wrong, _Tok())
    wrong.write_text("model_type: llama\nrms_norm_eps: 1e-5\n")  # YAML: a string
    with pytest.raises(ValueError, match=r"expected float.*write 1.0e-5"):
        load_model_config(wrong, _Tok())
