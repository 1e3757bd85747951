"""Helpers of the sft tests: tiny runs in this process or as subprocesses."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def parse(stage: str, argv: list[str]):
    """Parsed ``(script_args, training_args, model_args)`` of a stage's parser."""
    if stage == "pretrain":
        from cellrlhf.sft.pretrain import make_parser
    else:
        from cellrlhf.sft.sft import make_parser
    return make_parser().parse_args_and_config(argv)


def train(stage: str, argv: list[str]):
    """Run a stage in this process; returns :class:`~cellrlhf.sft.training_run.StageResult`."""
    from cellrlhf.sft.training_run import train_stage

    return train_stage(stage, *parse(stage, argv))


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def run_subprocess(args: list[str], *, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command from the repository root; fail the test with its output when it fails."""
    done = subprocess.run(
        args, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(args[:6])} ... failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )
    return done
