"""Paths and argument helpers shared by the RL stage tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PPO_TINY = REPO / "configs" / "ppo" / "tiny.yaml"
GRPO_TINY = REPO / "configs" / "ppo" / "grpo_tiny.yaml"


def rl_args(config: Path, *, make_parser, dataset: Path, sft: Path, out: Path, extra=()):
    """Parse a tiny RL config with the fixture paths and extra flags."""
    argv = [
        "--config",
        str(config),
        "--dataset_dir",
        str(dataset),
        "--model_name_or_path",
        str(sft),
        "--output_dir",
        str(out),
        *map(str, extra),
    ]
    return make_parser.parse_args_and_config(argv)
