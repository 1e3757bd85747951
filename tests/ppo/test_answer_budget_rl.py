"""RL start: the answer budget is derived from the training cells when unset, checked when set."""

from __future__ import annotations

import logging

from cellrlhf.cell2text.answer_budget import answer_token_lengths, resolve_answer_budget
from cellrlhf.ppo.configs import CellGRPOConfig, CellGRPOScriptArguments, CellPPOConfig
from cellrlhf.ppo.rl_run import open_rl_data


def test_budget_is_derived_when_unset_and_warned_when_too_short(
    rl_dataset_dir, sft_tokenizer, caplog
):
    data = open_rl_data(CellGRPOScriptArguments(dataset_dir=str(rl_dataset_dir)), seed=0)
    cells = [s for row in data.train["reference_sentences"] for s in row]
    lengths = answer_token_lengths(sft_tokenizer, cells)
    assert CellGRPOConfig(output_dir="x", report_to="none").max_completion_length is None

    budget, record = resolve_answer_budget(None, data.train, sft_tokenizer)
    assert budget == int(max(lengths)) == record["fits_budget"]  # tiny data: p99 is the max
    assert record["n_cut"] == 0 and record["source"].startswith("derived")

    short = int(min(lengths))
    with caplog.at_level(logging.WARNING, logger="cellrlhf.cell2text.answer_budget"):
        kept, record = resolve_answer_budget(short - 1, data.train, sft_tokenizer)
    assert kept == short - 1 and record["n_cut"] == len(cells)
    assert f"RL start: an answer budget of {short - 1} tokens cuts {len(cells)} of" in caplog.text


def _ppo_args(tmp_path, config, rl_dataset_dir, sft_model_dir, reward_model_dir, *extra):
    from ppo_test_support import rl_args

    from cellrlhf.ppo.ppo import make_parser

    return rl_args(
        config,
        make_parser=make_parser(),
        dataset=rl_dataset_dir,
        sft=sft_model_dir,
        out=tmp_path / "ppo",
        extra=["--reward_model_path", reward_model_dir, *extra],
    )


def test_ppo_derives_its_budget_when_unset(
    tmp_path, rl_dataset_dir, sft_model_dir, reward_model_dir, sft_tokenizer
):
    from ppo_test_support import PPO_TINY

    from cellrlhf.ppo.ppo import build_run

    assert CellPPOConfig(output_dir="x", report_to="none").response_length is None
    config = tmp_path / "ppo.yaml"
    lines = PPO_TINY.read_text().splitlines(keepends=True)
    config.write_text("".join(s for s in lines if not s.startswith("response_length")))
    args = _ppo_args(tmp_path, config, rl_dataset_dir, sft_model_dir, reward_model_dir)
    assert args[1].response_length is None

    run = build_run(*args)
    cells = [s for row in run.data.train["reference_sentences"] for s in row]
    longest = int(max(answer_token_lengths(sft_tokenizer, cells)))
    assert run.trainer.args.response_length == longest  # tiny data: p99 is the max
    assert run.info["answer_budget"]["budget"] == longest
    assert run.info["answer_budget"]["source"].startswith("derived")


def test_ppo_warns_when_its_budget_cuts_cells(
    tmp_path, rl_dataset_dir, sft_model_dir, reward_model_dir, sft_tokenizer, caplog
):
    from ppo_test_support import PPO_TINY

    from cellrlhf.ppo.ppo import build_run

    args = _ppo_args(
        tmp_path, PPO_TINY, rl_dataset_dir, sft_model_dir, reward_model_dir,
        "--response_length", "3",
    )
    with caplog.at_level(logging.WARNING, logger="cellrlhf.cell2text.answer_budget"):
        run = build_run(*args)
    assert run.trainer.args.response_length == 3
    assert run.info["answer_budget"]["source"] == "configured"
    assert "RL start: an answer budget of 3 tokens cuts" in caplog.text
    assert "set response_length to it" in caplog.text
