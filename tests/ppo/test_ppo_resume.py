"""PPO resumes exactly: a run killed after a checkpoint and re-run ends as an uninterrupted one.

The tiny data set has 4 training prompts and PPO draws 2 per update: 4 updates are two passes
over the prompts. The run is killed right after checkpoint 3 is saved (mid-pass: the resumed
loader must replay the pass and skip its first batch) and re-run in the same output directory;
resuming from checkpoint 2 (end of a pass) is checked too.
"""

import shutil

import pytest
import torch
from ppo_test_support import PPO_TINY, rl_args
from transformers import TrainerCallback

from cellrlhf.ppo.ppo_resume import (
    STATE_NAME,
    PPOResumeError,
    capture_rng_states,
    restore_rng_states,
)
from cellrlhf.sft.checkpoints import CHECKPOINT_MARKER, STAGING_DIRNAME

UPDATES = 4


class Killed(Exception):
    """Stands for the process being killed."""


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed


class CountUpdates(TrainerCallback):
    def __init__(self) -> None:
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def build(out, data, sft, reward, *extra):
    from cellrlhf.ppo.ppo import build_run, make_parser

    args = rl_args(
        PPO_TINY,
        make_parser=make_parser(),
        dataset=data,
        sft=sft,
        out=out,
        extra=[
            "--reward_model_path",
            reward,
            "--save_strategy",
            "steps",
            "--save_steps",
            "1",
            "--lr_scheduler_type",
            "linear",  # the learning rate changes every update: the scheduler must continue
            *extra,
        ],
    )
    return build_run(*args)


def snapshot(run) -> dict:
    trainer = run.trainer
    model = trainer.accelerator.unwrap_model(trainer.model)
    train_rows = [r for r in trainer.state.log_history if "objective/scores" in r]
    return {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "step": trainer.state.global_step,
        "episode": trainer.state.episode,
        "lr": trainer.lr_scheduler.get_last_lr(),
        "rows": [
            {k: v for k, v in r.items() if k != "eps" and "timing" not in k} for r in train_rows
        ],
        "heldout": [
            (h["step"], h["metrics"]["heldout/pearson_delta"]) for h in run.monitor.history
        ],
        "timed_steps": len(trainer.phase_timer.history),
    }


def assert_same_run(resumed: dict, reference: dict) -> None:
    assert resumed["step"] == reference["step"] == UPDATES
    assert resumed["episode"] == reference["episode"] == 2 * UPDATES
    assert resumed["lr"] == reference["lr"]
    lrs = [1e-3 * (1 - i / UPDATES) for i in range(UPDATES)]  # linear decay, one step per update
    assert [row["lr"] for row in resumed["rows"]] == pytest.approx(lrs)
    assert resumed["rows"] == reference["rows"]  # every update's rewards, KL, losses, lr
    assert resumed["heldout"] == reference["heldout"]
    assert resumed["timed_steps"] == reference["timed_steps"] == UPDATES
    assert resumed["weights"].keys() == reference["weights"].keys()
    for name, value in reference["weights"].items():
        assert torch.equal(resumed["weights"][name], value), name


@pytest.fixture(scope="module")
def runs(tmp_path_factory, rl_dataset_dir, sft_model_dir, reward_model_dir):
    """An uninterrupted run, and the same run killed after checkpoint 3 (its output dir)."""
    from cellrlhf.ppo.rl_run import train_run

    torch.set_num_threads(1)
    models = (rl_dataset_dir, sft_model_dir, reward_model_dir)
    root = tmp_path_factory.mktemp("ppo_resume")
    whole = build(root / "whole", *models)
    train_run(whole)
    killed = build(root / "killed", *models)
    killed.trainer.add_callback(KillAfterSave(3))
    with pytest.raises(Killed):
        train_run(killed)
    return snapshot(whole), root / "killed", models, root / "whole"


def test_killed_run_resumes_where_it_stopped_and_ends_identical(runs, tmp_path):
    from cellrlhf.ppo.rl_run import finish_run, resume_checkpoint, train_run

    reference, killed, models, _ = runs
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    run = build(out, *models)
    assert resume_checkpoint(run.trainer) == str(out / "checkpoint-3")
    updates = CountUpdates()
    run.trainer.add_callback(updates)
    train_run(run)
    assert updates.steps == [4]  # only the update after the checkpoint ran
    assert_same_run(snapshot(run), reference)
    assert finish_run(run)["last_step"] == UPDATES


def test_resume_at_the_end_of_a_pass_over_the_prompts(runs, tmp_path):
    from cellrlhf.ppo.rl_run import train_run

    reference, killed, models, _ = runs
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    shutil.rmtree(out / "checkpoint-3")
    run = build(out, *models)
    updates = CountUpdates()
    run.trainer.add_callback(updates)
    train_run(run)
    assert updates.steps == [3, 4]
    assert_same_run(snapshot(run), reference)


def test_a_run_killed_after_its_last_update_only_finishes(runs, tmp_path):
    from cellrlhf.ppo.rl_run import finish_run, train_run

    reference, _, models, whole = runs
    out = tmp_path / "run"
    shutil.copytree(whole, out)
    run = build(out, *models)
    updates = CountUpdates()
    run.trainer.add_callback(updates)
    train_run(run)
    assert updates.steps == []
    assert_same_run(snapshot(run), reference)
    assert finish_run(run)["last_step"] == UPDATES


def test_checkpoint_holds_weights_optimizer_scheduler_and_rng(runs):
    _, killed, _, _ = runs
    checkpoint = killed / "checkpoint-3"
    names = {p.name for p in checkpoint.iterdir()}
    assert names == {
        "policy_and_value.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state_0.pth",
        "trainer_state.json",
        STATE_NAME,
        CHECKPOINT_MARKER,
    }
    assert not list(killed.glob("*.bin")) and not list(checkpoint.glob("*.bin"))


def test_incomplete_and_staged_checkpoints_are_ignored(runs, tmp_path):
    from cellrlhf.ppo.rl_run import resume_checkpoint

    _, killed, models, _ = runs
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    optimizer = out / "checkpoint-3" / "optimizer.pt"  # cut short after its marker: incomplete
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    staged = out / STAGING_DIRNAME / "checkpoint-4"
    shutil.copytree(out / "checkpoint-2", staged)  # killed mid-save: only staged
    run = build(out, *models)
    assert resume_checkpoint(run.trainer) == str(out / "checkpoint-2")


def test_a_plain_trl_checkpoint_is_refused_not_deleted(runs, tmp_path):
    # one completeness rule for every stage: an unmarked checkpoint with its trainer state is
    # complete, so PPO names it and says how to start over instead of deleting it silently
    from cellrlhf.ppo.rl_run import resume_checkpoint, train_run

    _, _, models, _ = runs
    out = tmp_path / "run"
    other = out / "checkpoint-5"  # e.g. a GRPO run's, written by TRL
    other.mkdir(parents=True)
    (other / "trainer_state.json").write_text('{"global_step": 5}')
    run = build(out, *models)
    assert resume_checkpoint(run.trainer) == str(other)
    with pytest.raises(PPOResumeError, match="not a resumable cellrlhf PPO checkpoint"):
        train_run(run)
    assert (other / "trainer_state.json").is_file()


def test_a_checkpoint_of_another_configuration_is_refused(runs, tmp_path):
    from cellrlhf.ppo.rl_run import train_run

    _, killed, models, _ = runs
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    run = build(out, *models, "--total_episodes", "16", "--per_device_train_batch_size", "4")
    with pytest.raises(PPOResumeError) as err:
        train_run(run)
    message = str(err.value)
    assert (
        "other settings: batch_size 2 (checkpoint) vs 4 (this run); "
        "per_device_train_batch_size 2 (checkpoint) vs 4 (this run); "
        "total_episodes 8 (checkpoint) vs 16 (this run). "
    ) in message  # the number of updates (16 / 4) is the same: not named
    assert "--overwrite_output_dir" in message


def test_overwrite_output_dir_starts_at_update_zero(runs, tmp_path):
    from cellrlhf.ppo.rl_run import resume_checkpoint, train_run

    _, killed, models, _ = runs
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    run = build(out, *models, "--overwrite_output_dir", "--total_episodes", "2")
    assert resume_checkpoint(run.trainer) is None
    train_run(run)
    rows = [r for r in run.trainer.state.log_history if "objective/scores" in r]
    assert [r["step"] for r in rows] == [1] and run.trainer.state.episode == 2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]


def test_rng_states_round_trip():
    generator = torch.Generator().manual_seed(3)
    states = capture_rng_states(generator)
    first = (torch.rand(3), torch.rand(2, generator=generator))
    torch.rand(5)
    restore_rng_states(states, generator)
    assert torch.equal(torch.rand(3), first[0])
    assert torch.equal(torch.rand(2, generator=generator), first[1])
