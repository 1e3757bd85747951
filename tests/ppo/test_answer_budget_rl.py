"""RL start: the answer budget is derived from the training cells when unset, checked when set."""

from __future__ import annotations

import logging

from cellrlhf.cell2text.answer_budget import answer_token_lengths
from cellrlhf.ppo.configs import CellGRPOConfig, CellGRPOScriptArguments
from cellrlhf.ppo.rl_run import open_rl_data, resolve_answer_budget


def test_budget_is_derived_when_unset_and_warned_when_too_short(
    rl_dataset_dir, sft_tokenizer, caplog
):
    data = open_rl_data(CellGRPOScriptArguments(dataset_dir=str(rl_dataset_dir)), seed=0)
    cells = [s for row in data.train["reference_sentences"] for s in row]
    lengths = answer_token_lengths(sft_tokenizer, cells)
    assert CellGRPOConfig(output_dir="x", report_to="none").max_completion_length is None

    budget, record = resolve_answer_budget(None, data, sft_tokenizer)
    assert budget == int(max(lengths)) == record["fits_budget"]  # tiny data: p99 is the max
    assert record["n_cut"] == 0 and record["source"].startswith("derived")

    short = int(min(lengths))
    with caplog.at_level(logging.WARNING, logger="cellrlhf.cell2text.answer_budget"):
        kept, record = resolve_answer_budget(short - 1, data, sft_tokenizer)
    assert kept == short - 1 and record["n_cut"] == len(cells)
    assert f"RL start: an answer budget of {short - 1} tokens cuts {len(cells)} of" in caplog.text
