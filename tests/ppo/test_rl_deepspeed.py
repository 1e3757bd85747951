"""PPO and GRPO under ``accelerate launch`` with DeepSpeed ZeRO-2 / ZeRO-3: 2 CPU processes (gloo)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from ppo_test_support import GRPO_TINY, PPO_TINY, REPO
from safetensors.torch import load_file

pytest.importorskip("deepspeed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(stage: str, script: str, config, out, *, dataset, sft, extra=()):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs" / "accelerate" / f"deepspeed_{stage}.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(free_port()),
        str(REPO / script),
        "--config",
        str(config),
        "--ddp_backend",
        "gloo",
        "--dataset_dir",
        str(dataset),
        "--model_name_or_path",
        str(sft),
        "--output_dir",
        str(out),
        *map(str, extra),
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out


def check_run(out, sft_model_dir, stage_name):
    info = json.loads((out / "cellrlhf.json").read_text())
    assert info["stage"] == stage_name
    history = json.loads((out / "heldout_eval_history.json").read_text())
    steps = [e["step"] for e in history["evaluations"]]
    assert steps[0] == 0 and steps[-1] == history["evaluations"][-1]["step"] > 0
    assert history["evaluations"][0]["metrics"]["heldout/kl"] == pytest.approx(0.0, abs=1e-6)
    sft = load_file(str(sft_model_dir / "model.safetensors"))
    trained = out / "last" if (out / "last").exists() else out
    weights = load_file(str(trained / "model.safetensors"))
    assert set(weights) == set(sft)
    assert any(not torch.equal(weights[k], sft[k]) for k in sft)  # full weights, trained
    timing = json.loads((out / "phase_timing.json").read_text())
    assert timing["steps"] and timing["mean"]["reward_fraction"] > 0
    return weights


@pytest.mark.slow
def test_ppo_under_zero2_and_zero3_trains_the_same_policy(
    tmp_path, rl_dataset_dir, sft_model_dir, reward_model_dir
):
    weights = {}
    for stage in ("zero2", "zero3"):
        out = launch(
            stage,
            "ppo.py",
            PPO_TINY,
            tmp_path / stage,
            dataset=rl_dataset_dir,
            sft=sft_model_dir,
            extra=["--reward_model_path", reward_model_dir, "--select_best", "false"],
        )
        weights[stage] = check_run(out, sft_model_dir, "ppo")
    # same seeds, same data: ZeRO-3's gathered weights are ZeRO-2's
    for name, value in weights["zero2"].items():
        torch.testing.assert_close(weights["zero3"][name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_grpo_under_zero3_with_fidelity_reward(tmp_path, rl_dataset_dir, sft_model_dir):
    out = launch(
        "zero3",
        "grpo.py",
        GRPO_TINY,
        tmp_path / "grpo",
        dataset=rl_dataset_dir,
        sft=sft_model_dir,
        extra=["--max_steps", "2", "--select_best", "false"],
    )
    check_run(out, sft_model_dir, "grpo")
