"""Reward training resumes like every training stage (:mod:`cellrlhf.sft.checkpoints`).

TRL's RewardTrainer writes no cellrlhf marker: its checkpoints count as complete once
``trainer_state.json`` is written (the Trainer writes it last), by the same rule the other
stages and the pipeline use.
"""

from __future__ import annotations

import json

import rm_fixtures
from test_reward_model import _train

rm_dataset_dir = rm_fixtures.rm_dataset_dir
rm_preferences_dir = rm_fixtures.rm_preferences_dir
rm_sft_dir = rm_fixtures.rm_sft_dir

SAVE_EVERY_STEP = (
    *("--save_strategy", "steps", "--save_steps", "1", "--max_train_pairs", "32"),
    *("--per_device_train_batch_size", "16", "--final_eval", "false", "--logging_steps", "1"),
)


def _written_ns(checkpoint) -> int:
    """When the checkpoint's weights were written (a resumed run leaves them alone)."""
    return (checkpoint / "model.safetensors").stat().st_mtime_ns


def test_a_rerun_resumes_from_the_last_complete_checkpoint(
    rm_sft_dir, rm_preferences_dir, tmp_path, caplog
):
    out = tmp_path / "rm"
    _train(rm_sft_dir, rm_preferences_dir, out, *SAVE_EVERY_STEP, "--max_steps", "2")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    (out / "checkpoint-2" / "trainer_state.json").unlink()  # killed while saving step 2
    first = _written_ns(out / "checkpoint-1")

    args = (*SAVE_EVERY_STEP, "--max_steps", "3")
    with caplog.at_level("INFO", logger="cellrlhf.sft.checkpoints"):
        _train(rm_sft_dir, rm_preferences_dir, out, *args)
    assert f"resuming from {out / 'checkpoint-1'} (step 1)" in caplog.text
    assert "skipping checkpoint checkpoint-2" in caplog.text
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and [r["step"] for r in state["log_history"][:3]] == [1, 2, 3]
    assert _written_ns(out / "checkpoint-1") == first  # steps 2 and 3 only were trained
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()

    caplog.clear()
    with caplog.at_level("INFO", logger="cellrlhf.sft.checkpoints"):
        _train(rm_sft_dir, rm_preferences_dir, out, *args, "--resume_from_checkpoint", "none")
    assert "resuming from" not in caplog.text
    assert _written_ns(out / "checkpoint-1") != first  # started over from step 1
