"""Reward-model training (TRL RewardTrainer), its saved directory, evaluation and the launchers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rm_fixtures
from datasets import DatasetDict, load_from_disk
from rm_fixtures import (
    TEST_TARGETS,
)
from scipy.stats import spearmanr

from cellrlhf.reward.reward_model_eval import (
    evaluate_reward_model,
    pairwise_accuracy,
    spearman,
    within_group_spearman,
)
from cellrlhf.reward.train import CellRewardConfig, make_parser, training_pairs

# the shared session fixtures (tests/reward/rm_fixtures.py)
rm_dataset_dir = rm_fixtures.rm_dataset_dir
rm_preferences_dir = rm_fixtures.rm_preferences_dir
rm_sft_dir = rm_fixtures.rm_sft_dir

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "reward" / "tiny.yaml")


def _args(sft, prefs, out, *extra):
    return [
        "--config",
        TINY,
        "--model_name_or_path",
        str(sft),
        "--preferences_dir",
        str(prefs),
        "--output_dir",
        str(out),
        "--disable_tqdm",
        "true",
        *extra,
    ]


def _train(sft, prefs, out, *extra) -> dict:
    from cellrlhf.reward.train import main

    args, model_args = make_parser().parse_args_and_config(_args(sft, prefs, out, *extra))
    return main(args, model_args)


# --------------------------------------------------------------------------- metrics
def test_pairwise_accuracy_and_rank_correlations():
    assert pairwise_accuracy(np.array([1.0, 2.0, 0.0]), np.array([0.0, 2.0, 1.0])) == 0.5
    assert math.isnan(pairwise_accuracy(np.array([]), np.array([])))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=40), rng.normal(size=40)
    b[:10] = a[:10]  # ties and shared values
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert math.isnan(spearman(np.ones(5), np.arange(5.0)))
    groups = ["p"] * 20 + ["q"] * 20
    x = np.r_[np.arange(20.0), np.arange(20.0)]
    y = np.r_[np.arange(20.0), -np.arange(20.0)]
    assert within_group_spearman(x, y, groups) == (pytest.approx(0.0), 2)


def test_training_pairs_kinds_subsample_and_margin(rm_preferences_dir):
    pairs = load_from_disk(str(rm_preferences_dir / "pairs"))["train"]
    only = training_pairs(pairs, pair_kinds=["control", "shuffled"])
    assert only.column_names == ["prompt", "chosen", "rejected"]
    assert len(only) == sum(k in ("control", "shuffled") for k in pairs["pair_kind"])
    few = training_pairs(pairs, max_pairs=10, seed=3)
    assert len(few) == 10 and few.to_list() == training_pairs(pairs, max_pairs=10, seed=3).to_list()
    margin = training_pairs(pairs, margin_scale=2.0)
    expected = np.maximum(
        0.0, 2.0 * (np.array(list(pairs["score_chosen"])) - np.array(list(pairs["score_rejected"])))
    )
    assert np.allclose(list(margin["margin"]), expected)
    with pytest.raises(ValueError, match="matches no pair"):
        training_pairs(pairs, pair_kinds=["nonexistent"])


def test_config_from_yaml_with_flag_overrides(tmp_path):
    args, model_args = make_parser().parse_args_and_config(
        _args(
            "sft", "prefs", tmp_path, "--learning_rate", "0.5", "--pair_kinds", "sampled", "control"
        )
    )
    assert isinstance(args, CellRewardConfig)
    assert args.learning_rate == 0.5  # flag beats YAML
    assert args.num_train_epochs == 3  # from YAML
    assert args.pair_kinds == ["sampled", "control"]
    assert args.bf16 is False and args.gradient_checkpointing is False
    assert model_args.model_name_or_path == "sft"
    with pytest.raises(ValueError, match="score_margin_scale"):
        CellRewardConfig(output_dir=str(tmp_path), score_margin_scale=-1.0)


def test_cli_reports_missing_inputs(tmp_path, rm_sft_dir, capsys):
    from cellrlhf.cli import main as cellrlhf_main

    code = cellrlhf_main(["reward", *_args(tmp_path / "nope", tmp_path, tmp_path / "out")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code = cellrlhf_main(["reward", *_args(rm_sft_dir, tmp_path, tmp_path / "out")])
    assert code == 2 and "not a preference directory" in capsys.readouterr().err


# --------------------------------------------------------------------------- training
def _split_pairs(prefs: Path, out: Path, *, seed: int = 0) -> Path:
    """A preference directory whose train pairs are split 75 / 25 at random (held-out pairs)."""
    pairs = load_from_disk(str(prefs / "pairs"))["train"]
    order = np.random.default_rng(seed).permutation(len(pairs))
    cut = int(0.75 * len(pairs))
    DatasetDict(
        {"train": pairs.select(order[:cut]), "test": pairs.select(order[cut:])}
    ).save_to_disk(str(out / "pairs"))
    (out / "manifest.json").write_text((prefs / "manifest.json").read_text())
    return out


@pytest.fixture(scope="module")
def trained_reward_model(tmp_path_factory, rm_sft_dir, rm_preferences_dir):
    """Reward model trained on 75 % of the simulated pairs; evaluated on the other 25 %."""
    root = tmp_path_factory.mktemp("rm_train")
    prefs = _split_pairs(rm_preferences_dir, root / "prefs")
    result = _train(rm_sft_dir, prefs, root / "model", "--num_train_epochs", "8")
    return root, prefs, result


def test_training_raises_pairwise_accuracy(trained_reward_model, rm_sft_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root, prefs, after = trained_reward_model
    held_out = load_from_disk(str(prefs / "pairs"))["test"]
    torch.manual_seed(0)
    untrained = AutoModelForSequenceClassification.from_pretrained(rm_sft_dir, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(rm_sft_dir)
    untrained.config.pad_token_id = tokenizer.pad_token_id
    before = evaluate_reward_model(untrained, tokenizer, held_out, progress=False)
    assert after["n_pairs"] == len(held_out)
    # measured: 0.42 before, 0.72 after (sampled pairs 0.67, every hard-negative kind 1.0)
    assert after["pairwise_accuracy"] >= 0.65
    assert after["pairwise_accuracy"] - before["pairwise_accuracy"] >= 0.2
    hard = [k for k in after["pairwise_accuracy_by_kind"] if k != "sampled"]
    assert min(after["pairwise_accuracy_by_kind"][k] for k in hard) >= 0.75


def test_saved_reward_model_follows_the_model_contract(trained_reward_model, rm_sft_dir):
    import torch
    from transformers import AutoModelForSequenceClassification

    from cellrlhf.reward.reward_model_eval import load_reward_model, score_conversations
    from cellrlhf.sft.model_dir import load_model_info

    root, prefs, _ = trained_reward_model
    model_dir = root / "model"
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "gene_vocab.json",
        "expression_decoder.json",
        "data_manifest.json",
        "training_config.yaml",
        "reward_model_eval.json",
        "reward_model_eval.png",
    ):
        assert (model_dir / name).is_file(), name
    info = load_model_info(model_dir)
    assert info["stage"] == "reward" and info["num_labels"] == 1
    assert info["tokenizer_mode"] == "gene_tokens" and info["sft_model"] == str(rm_sft_dir)
    # how its preferences were sampled (the fixture samples freely): PPO compares it with its policy
    assert info["preferences"]["constrain_cells"] is False
    assert (model_dir / "gene_vocab.json").read_text() == (
        rm_sft_dir / "gene_vocab.json"
    ).read_text()
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["pad_token_id"] is not None
    # the tokenizer is the SFT model's
    assert (model_dir / "tokenizer.json").read_text() == (rm_sft_dir / "tokenizer.json").read_text()
    # backbone initialised from the SFT weights: the head is new, the embeddings are trained on
    sft = AutoModelForSequenceClassification.from_pretrained(rm_sft_dir, num_labels=1)
    model, tokenizer = load_reward_model(model_dir)
    assert model.config.num_labels == 1
    assert not torch.equal(sft.model.embed_tokens.weight, model.model.embed_tokens.weight)
    pairs = load_from_disk(str(prefs / "pairs"))["test"].select(range(4))
    convs = [list(p) + list(c) for p, c in zip(pairs["prompt"], pairs["chosen"], strict=True)]
    scores = score_conversations(model, tokenizer, convs, batch_size=3, progress=False)
    one_by_one = [score_conversations(model, tokenizer, [c], progress=False)[0] for c in convs]
    assert np.allclose(scores, one_by_one, atol=1e-5)  # padding does not change a score
    saved = json.loads((model_dir / "reward_model_eval.json").read_text())
    assert set(saved) >= {"pairwise_accuracy", "pairwise_accuracy_by_kind", "n_pairs"}


def test_reward_model_eval_on_held_out_perturbations(
    trained_reward_model, rm_preferences_dir, tmp_path
):
    from cellrlhf.reward.reward_model_eval import main as eval_main

    root, _, _ = trained_reward_model
    assert (
        eval_main(
            ["--model_dir", str(root / "model"), "--preferences_dir", str(rm_preferences_dir)]
            + ["--output_dir", str(tmp_path)]
        )
        == 0
    )
    result = json.loads((tmp_path / "reward_model_eval.json").read_text())
    assert result["perturbations"] == list(TEST_TARGETS)
    assert result["n_completions"] == 16 * len(TEST_TARGETS) and result["n_prompts"] == 2
    assert -1.0 <= result["spearman"] <= 1.0
    # intervals over the held-out perturbations, and the sentence for the report
    assert result["pairwise_accuracy_interval"]["n_clusters"] == len(TEST_TARGETS)
    assert result["spearman_within_prompt_interval"]["n_clusters"] <= len(TEST_TARGETS)
    assert result["verdict"]["sentence"].startswith("The reward model's held-out pairwise")


def test_lora_reward_model_is_saved_merged(rm_sft_dir, rm_preferences_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "lora"
    _train(
        rm_sft_dir,
        rm_preferences_dir,
        out,
        "--use_peft",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "--num_train_epochs",
        "1",
        "--max_train_pairs",
        "32",
        "--final_eval",
        "false",
    )
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())
    info = json.loads((out / "cellrlhf.json").read_text())
    assert info["stage"] == "reward"


@pytest.mark.slow
def test_accelerate_launch_deepspeed_zero2_on_cpu(rm_sft_dir, rm_preferences_dir, tmp_path):
    """``accelerate launch`` of the root script with DeepSpeed ZeRO-2, two CPU processes."""
    out = tmp_path / "zero2"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs" / "accelerate" / "deepspeed_zero2.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        "29517",
        str(REPO / "reward.py"),
        *_args(rm_sft_dir, rm_preferences_dir, out),
        "--ddp_backend",
        "gloo",
        "--num_train_epochs",
        "1",
        "--max_train_pairs",
        "64",
        "--per_device_train_batch_size",
        "8",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    info = json.loads((out / "cellrlhf.json").read_text())
    assert info["stage"] == "reward"
    assert (out / "model.safetensors").is_file()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4  # 64 pairs / (2 processes x 8)
    result = json.loads((out / "reward_model_eval.json").read_text())
    assert result["n_pairs"] > 0


# ---------------------------------------------------------------------------- intervals, verdict
def test_pair_accuracy_interval_over_perturbations_by_hand():
    from cellrlhf.reward.reward_model_eval import pair_accuracy_interval

    # A: one right, one wrong (0.5); B: a tie (0.5); C: right (1.0) -> mean over perturbations
    chosen = np.array([2.0, 0.0, 1.0, 3.0])
    rejected = np.array([1.0, 1.0, 1.0, 0.0])
    got = pair_accuracy_interval(chosen, rejected, ["A", "A", "B", "C"])
    assert got["estimate"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    # three perturbations: Student's t interval, clipped to an accuracy's range
    assert got["n_clusters"] == 3 and (got["low"], got["high"]) == (0.0, 1.0)
    perfect = pair_accuracy_interval(np.ones(4), np.zeros(4), ["A", "B", "C", "D"])
    assert (perfect["estimate"], perfect["low"], perfect["high"]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="one entry per pair"):
        pair_accuracy_interval(np.ones(2), np.zeros(2), ["A"])


def test_within_prompt_spearman_interval_by_hand():
    from cellrlhf.reward.reward_model_eval import within_prompt_spearman_interval

    true = [1, 2, 3] * 3
    rm = [1, 2, 3, 3, 2, 1, 1, 2, 3]  # prompt p1: +1, p2: -1 (both A), p3: +1 (B)
    got = within_prompt_spearman_interval(
        rm, true, ["p1"] * 3 + ["p2"] * 3 + ["p3"] * 3, ["A"] * 6 + ["B"] * 3
    )
    assert got["estimate"] == pytest.approx(0.5)  # A: mean(1, -1) = 0, B: 1
    assert got["n_clusters"] == 2 and got["low"] == -1.0  # t interval of (0, 1), clipped


def _result(acc_by_kind, rho=None):
    result = {"pairwise_accuracy_interval_by_kind": acc_by_kind}
    if rho is not None:
        result["spearman_within_prompt_interval"] = rho
    return result


def _interval(estimate, low, high, n=6):
    return {"estimate": estimate, "low": low, "high": high, "n_clusters": n}


def test_verdict_near_chance_recommends_the_programmatic_reward():
    from cellrlhf.reward.reward_model_eval import reward_model_verdict

    # hard negatives are easy; the sampled pairs (what RL produces) are at chance: they decide
    verdict = reward_model_verdict(
        _result(
            {"sampled": _interval(0.56, 0.47, 0.65), "other_perturbation": _interval(0.95, 0.9, 1)},
            rho=_interval(0.05, -0.10, 0.20),
        )
    )
    assert verdict["near_chance"] and verdict["pairs"] == "sampled"
    assert (
        "accuracy on sampled pairs 0.56 (95% CI 0.47 to 0.65, 6 perturbations)"
        in (verdict["sentence"])
    )
    assert (
        "PPO with this reward model cannot be expected to help; use the programmatic reward "
        "(GRPO)." in verdict["sentence"]
    )
    assert "does not rank one prompt's answers better than random" in verdict["sentence"]


def test_verdict_above_chance_and_too_few_perturbations():
    from cellrlhf.reward.reward_model_eval import reward_model_verdict

    good = reward_model_verdict(
        _result({"sampled": _interval(0.8, 0.7, 0.9)}, rho=_interval(0.6, 0.4, 0.8))
    )
    assert not good["near_chance"] and "above chance" in good["sentence"]
    assert "PPO" not in good["sentence"] and "better than random" not in good["sentence"]
    # no sampled pairs: all pairs decide; one perturbation: no interval, not shown above chance
    single = reward_model_verdict(
        {"pairwise_accuracy_interval": _interval(0.9, math.nan, math.nan, n=1)}
    )
    assert single["near_chance"] and single["pairs"] == "all"
    assert "1 perturbation: too few for an interval" in single["sentence"]


def test_evaluate_reward_model_reports_intervals_and_verdict(monkeypatch, caplog):
    """Hand-made scores in place of the model: accuracy per perturbation, then the verdict."""
    import logging

    from datasets import Dataset

    import cellrlhf.reward.reward_model_eval as rme

    prompt = [{"role": "user", "content": "p"}]
    pairs = Dataset.from_dict(
        {
            "prompt": [prompt] * 4,
            "chosen": [[{"role": "assistant", "content": f"c{i}"}] for i in range(4)],
            "rejected": [[{"role": "assistant", "content": f"r{i}"}] for i in range(4)],
            "pair_kind": ["sampled"] * 4,
            "perturbation": ["A", "A", "B", "C"],
        }
    )
    scores = {"c0": 2.0, "r0": 1.0, "c1": 0.0, "r1": 1.0, "c2": 1.0, "r2": 1.0, "c3": 3, "r3": 0}

    def fake_scores(model, tokenizer, conversations, **kwargs):
        return np.array([scores[c[-1]["content"]] for c in conversations], dtype=float)

    monkeypatch.setattr(rme, "score_conversations", fake_scores)
    with caplog.at_level(logging.WARNING, logger="cellrlhf.reward.reward_model_eval"):
        result = rme.evaluate_reward_model(None, None, pairs, progress=False)
    assert result["pairwise_accuracy"] == pytest.approx(2.5 / 4)  # pooled over pairs
    interval = result["pairwise_accuracy_interval_by_kind"]["sampled"]
    assert interval["estimate"] == pytest.approx(2 / 3) and interval["low"] == 0.0
    assert result["verdict"]["near_chance"]
    assert "use the programmatic reward (GRPO)" in caplog.text
