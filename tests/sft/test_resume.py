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
from sft_helpers import REPO, subprocess_env, tiny_args, train

from cellrlhf.sft.checkpoints import STAGING_DIRNAME, checkpoint_problem, list_checkpoints

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
