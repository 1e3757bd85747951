"""A run killed mid-way resumes and ends where an unbroken run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from sft_helpers import REPO, subprocess_env, train

from cellrlhf.sft.checkpoints import STAGING_DIRNAME, checkpoint_problem, list_checkpoints
from tests.fixtures.tiny_model import tiny_args

STEPS = 120
RUN = ("--max_steps", str(STEPS), "--logging_steps", "10", "--eval_generation_samples", "0")


def _from(pretrained) -> tuple[str, ...]:
    return ("--model_config", "none", "--model_name_or_path", str(pretrained))


def _log_at(model_dir, step: int) -> dict:
    history = json.loads((model_dir / "trainer_state.json").read_text())["log_history"]
    return next(e for e in history if e.get("step") == step and "loss" in e)


@pytest.mark.slow
def test_resume_after_sigkill_matches_unbroken_run(tiny_data, pretrained, tmp_path):
    run = (*RUN, *_from(pretrained))
    unbroken = tmp_path / "unbroken"
    train("sft", tiny_args("sft", tiny_data, unbroken, *run))

    killed = tmp_path / "killed"
    saving = (*run, "--save_strategy", "steps", "--save_steps", "10")
    argv = tiny_args("sft", tiny_data, killed, *saving)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellrlhf", "sft", *argv],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if any(int(p.name.split("-")[1]) >= 20 for p in list_checkpoints(killed)):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed; raise STEPS"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    checkpoints = list_checkpoints(killed)
    assert checkpoints and all(checkpoint_problem(c) is None for c in checkpoints)
    assert not (killed / "model.safetensors").exists()
    last_step = int(checkpoints[-1].name.split("-")[1])
    assert last_step < STEPS

    resumed = train(
        "sft", tiny_args("sft", tiny_data, killed, *saving, "--resume_from_checkpoint", "last")
    )
    assert resumed.trainer.state.global_step == STEPS
    assert not (killed / STAGING_DIRNAME).exists()
    expected, got = _log_at(unbroken, STEPS), _log_at(killed, STEPS)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-3)
    a = load_file(str(unbroken / "model.safetensors"))
    b = load_file(str(killed / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_death_during_a_save_leaves_no_checkpoint(tiny_data, tmp_path, monkeypatch):
    import cellrlhf.sft.trainer as trainer_module

    real_publish = trainer_module.publish_checkpoint
    calls = []

    def dies_on_second_save(staged, final):
        calls.append(final)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed while saving")
        return real_publish(staged, final)

    monkeypatch.setattr(trainer_module, "publish_checkpoint", dies_on_second_save)
    out = tmp_path / "run"
    run = (
        "--max_steps",
        "8",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--eval_generation_samples",
        "0",
    )
    with pytest.raises(KeyboardInterrupt):
        train("sft", tiny_args("sft", tiny_data, out, *run))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert (
        out / STAGING_DIRNAME / "checkpoint-4"
    ).is_dir()  # the interrupted save stayed in staging

    monkeypatch.setattr(trainer_module, "publish_checkpoint", real_publish)
    resumed = train(
        "sft", tiny_args("sft", tiny_data, out, *run, "--resume_from_checkpoint", "last")
    )
    assert resumed.trainer.state.global_step == 8
    assert not (out / STAGING_DIRNAME).exists()
    assert [p.name for p in list_checkpoints(out)] == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-6",
        "checkpoint-8",
    ]


class _StopAt:
    """A callback that stops training after ``step`` (a run cut short after a checkpoint)."""

    def __new__(cls, step: int):
        from transformers import TrainerCallback

        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= step:
                    control.should_training_stop = True

        return Stop()


class _FirstStep:
    """Records the global step of the first optimizer step a run takes."""

    def __new__(cls, seen: list):
        from transformers import TrainerCallback

        class First(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if not seen:
                    seen.append(state.global_step)

        return First()


def _train_with(stage, argv, *callbacks):
    from sft_helpers import parse

    from cellrlhf.sft.training_run import train_stage

    return train_stage(stage, *parse(stage, argv), callbacks=callbacks)


def test_a_rerun_resumes_from_the_last_checkpoint_by_default(tiny_data, tmp_path, caplog):
    out = tmp_path / "run"
    run = ("--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2")
    run = (*run, "--eval_generation_samples", "0")
    argv = tiny_args("sft", tiny_data, out, *run)
    stopped = _train_with("sft", argv, _StopAt(4))
    assert stopped.trainer.state.global_step == 4
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]

    seen: list[int] = []
    with caplog.at_level("INFO", logger="cellrlhf.sft.checkpoints"):
        resumed = _train_with("sft", argv, _FirstStep(seen))
    assert seen == [5] and resumed.trainer.state.global_step == 6
    assert f"resuming from {out / 'checkpoint-4'} (step 4)" in caplog.text
    assert "--resume_from_checkpoint none or --overwrite_output_dir" in caplog.text
    assert [p.name for p in list_checkpoints(out)] == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-6",
    ]


@pytest.mark.parametrize(
    "start_over", [("--resume_from_checkpoint", "none"), ("--overwrite_output_dir",)]
)
def test_start_over_flags_train_from_step_zero(tiny_data, tmp_path, start_over, caplog):
    out = tmp_path / "run"
    run = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2")
    run = (*run, "--eval_generation_samples", "0")
    _train_with("sft", tiny_args("sft", tiny_data, out, *run))
    seen: list[int] = []
    with caplog.at_level("INFO", logger="cellrlhf.sft.checkpoints"):
        again = _train_with(
            "sft", tiny_args("sft", tiny_data, out, *run, *start_over), _FirstStep(seen)
        )
    assert seen == [1] and again.trainer.state.global_step == 4
    assert "resuming from" not in caplog.text


def test_incomplete_checkpoints_are_skipped_by_the_default(tmp_path):
    from cellrlhf.sft.checkpoints import resolve_resume, write_checkpoint_marker

    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_text("x")
    write_checkpoint_marker(tmp_path / "checkpoint-2", step=2)
    assert resolve_resume(None, tmp_path) == str(tmp_path / "checkpoint-2")
    assert resolve_resume("none", tmp_path) is None
    assert resolve_resume(None, tmp_path, overwrite_output_dir=True) is None
    # plain transformers checkpoints: complete when trainer_state.json was written
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    assert resolve_resume(None, tmp_path) == str(tmp_path / "checkpoint-4")
    assert resolve_resume(None, tmp_path / "missing") is None
