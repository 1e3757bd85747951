import json

import pytest
from ppo_test_support import REPO

from cellrlhf.cli import main as cellrlhf_main
from cellrlhf.ppo.configs import CellGRPOConfig, CellPPOConfig, CellRLOOConfig
from cellrlhf.ppo.grpo import make_parser as grpo_parser
from cellrlhf.ppo.grpo import trainer_choice
from cellrlhf.ppo.ppo import make_parser as ppo_parser

CONFIGS = REPO / "configs" / "ppo"
GPU_ON_CPU = ["--bf16", "false", "--gradient_checkpointing", "false"]


@pytest.mark.parametrize("name", ["tiny", "cpu_demo", "gpu"])
def test_ppo_configs_parse_and_flags_override_them(name):
    extra = GPU_ON_CPU if name == "gpu" else []
    script, training, model = ppo_parser().parse_args_and_config(
        [
            "--config",
            str(CONFIGS / f"{name}.yaml"),
            "--kl_coef",
            "0.123",
            "--heldout_num_samples",
            "96",
            *extra,
        ]
    )
    assert isinstance(training, CellPPOConfig)
    assert training.kl_coef == 0.123 and script.heldout_num_samples == 96
    assert training.stop_token == "eos" and training.bf16 is False
    assert training.missing_eos_penalty == 0.5
    assert training.num_sample_generations == 0


@pytest.mark.parametrize("name", ["grpo_tiny", "grpo_cpu_demo", "grpo_gpu"])
@pytest.mark.parametrize("trainer", ["grpo", "rloo"])
def test_grpo_configs_parse_for_both_trainers(name, trainer):
    argv = ["--config", str(CONFIGS / f"{name}.yaml"), "--trainer", trainer, "--beta", "0.5"]
    if name == "grpo_gpu":
        argv += GPU_ON_CPU
    assert trainer_choice(argv) == trainer
    script, training, _ = grpo_parser(trainer).parse_args_and_config(argv)
    assert script.trainer == trainer and training.beta == 0.5
    assert isinstance(training, CellGRPOConfig if trainer == "grpo" else CellRLOOConfig)
    assert set(script.rewards) <= {"fidelity", "model"}


def test_trainer_choice_reads_flag_then_yaml_then_default(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("trainer: rloo\n")
    assert trainer_choice(["--config", str(config)]) == "rloo"
    assert trainer_choice(["--config", str(config), "--trainer=grpo"]) == "grpo"
    assert trainer_choice([]) == "grpo"
    with pytest.raises(ValueError, match="choose one of"):
        trainer_choice(["--trainer", "dpo"])


def test_reward_arguments_are_checked():
    parser = grpo_parser("grpo")
    tiny = ["--config", str(CONFIGS / "grpo_tiny.yaml")]
    with pytest.raises(ValueError, match="no --reward_model_path"):
        parser.parse_args_and_config([*tiny, "--rewards", "fidelity", "model"])
    with pytest.raises(ValueError, match="not valid JSON"):
        parser.parse_args_and_config([*tiny, "--fidelity_reward_kwargs", "{bad"])
    script, *_ = parser.parse_args_and_config(
        [*tiny, "--fidelity_reward_kwargs", '{"weights": {"duplicates": 2.0}}']
    )
    assert script.fidelity_reward_kwargs == {"weights": {"duplicates": 2.0}}
    with pytest.raises(ValueError, match="heldout_num_samples"):
        parser.parse_args_and_config([*tiny, "--heldout_num_samples", "1"])


def test_cli_doors_show_help(capsys):
    for command in ("ppo", "grpo"):
        with pytest.raises(SystemExit) as exit_info:
            cellrlhf_main([command, "--help"])
        assert exit_info.value.code == 0
        assert "--heldout_every_steps" in capsys.readouterr().out


def test_missing_inputs_are_named(tmp_path, rl_dataset_dir):
    from cellrlhf.ppo.model_loading import check_model_dir
    from cellrlhf.sft.model_dir import ModelDirError

    with pytest.raises(ModelDirError, match="--reward_model_path"):
        check_model_dir(None, what="reward model", flag="--reward_model_path")
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ModelDirError, match="LoRA adapters only"):
        check_model_dir(tmp_path, what="SFT policy", flag="--model_name_or_path")
    with pytest.raises(ModelDirError, match="has no config.json"):
        check_model_dir(rl_dataset_dir, what="SFT policy", flag="--model_name_or_path")


def test_reward_model_with_another_vocabulary_is_refused(sft_tokenizer):
    import copy

    from cellrlhf.ppo.model_loading import check_same_tokenizer
    from cellrlhf.sft.model_dir import ModelDirError

    other = copy.deepcopy(sft_tokenizer)
    other.add_tokens(["NEWGENE"])
    with pytest.raises(ModelDirError, match="NEWGENE"):
        check_same_tokenizer(sft_tokenizer, other, where="rm")
    check_same_tokenizer(sft_tokenizer, copy.deepcopy(sft_tokenizer), where="rm")


@pytest.mark.parametrize(
    ("learned", "policy", "warns"),
    [
        (True, True, False),
        (False, False, False),
        (False, True, True),
        (True, False, True),
        (None, True, False),
    ],
)
def test_ppo_warns_when_the_reward_model_learned_on_other_sampling(
    tmp_path, caplog, learned, policy, warns
):
    """A reward model trained on free samples scores a constrained policy's answers (or the
    reverse): PPO says so and names the fix; a reward model without the record is not judged."""
    from cellrlhf.ppo.ppo import _warn_reward_sampling

    preferences = {"path": "prefs"} if learned is None else {"constrain_cells": learned}
    info = {"format": "cellrlhf.model", "stage": "reward", "preferences": preferences}
    (tmp_path / "cellrlhf.json").write_text(json.dumps(info))
    with caplog.at_level("WARNING", logger="cellrlhf.ppo.ppo"):
        assert _warn_reward_sampling(tmp_path, policy) is warns
    if warns:
        (record,) = caplog.records
        assert f"--constrain_cells {str(policy).lower()}" in record.getMessage()
    else:
        assert not caplog.records
