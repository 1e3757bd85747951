"""A small simulated dataset built by the data stage and a model SFT-trained on it, for the
evaluation tests (built once per session; seconds on two cores)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "data"))

from data_stage_helpers import small_config  # noqa: E402

SIM_SETTINGS = {
    "n_cells": 900,
    "n_genes": 60,
    "n_programs": 4,
    "n_perturbations": 8,
    "n_combinations": 2,
    "n_contexts": 2,
    "seed": 5,
}


def small_data_config():
    """The data-stage tests' fast simulated config, smaller, with the RL and response tasks."""
    return small_config(
        name="eval-test-sim",
        source={"simulate": dict(SIM_SETTINGS)},
        sentences={"top_k": 16},
        pretrain={"enabled": False},
        sft={
            "context_noun": "cell_line",
            "tasks": {
                "cell_annotation": {"enabled": False},
                "cell_generation": {"max_examples": 40, "max_eval_examples": 10},
                "perturbation_response": {
                    "max_examples": 200,
                    "max_eval_examples": 20,
                    "context": "none",
                },
                "perturbation_effect": {"enabled": False},
                "perturbation_identification": {"enabled": False},
            },
        },
        rl={"min_cells": 15, "n_reference_sentences": 8, "max_control_cells": 64},
    )


def build_small_dataset(out: Path) -> Path:
    from cellrlhf.data.build import build_datasets

    return build_datasets(small_data_config(), out_dir=out).path


def train_small_model(dataset_dir: Path, out: Path, *, steps: int = 30) -> Path:
    """The SFT stage's tiny config for a few steps on the dataset (a real saved model dir)."""
    from cellrlhf.sft.sft import main, make_parser

    args = make_parser().parse_args_and_config(
        [
            "--config",
            str(REPO / "configs" / "sft" / "tiny.yaml"),
            "--dataset_dir",
            str(dataset_dir),
            "--output_dir",
            str(out),
            "--max_steps",
            str(steps),
            "--eval_generation_samples",
            "0",
        ]
    )
    main(*args)
    return out
