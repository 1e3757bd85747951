"""Settings shared by the data-stage tests (imported by conftest.py and test modules)."""

from __future__ import annotations

from cellrlhf.data.config import DataBuildConfig

SIM_SETTINGS = {
    "n_cells": 1200,
    "n_genes": 120,
    "n_programs": 6,
    "n_perturbations": 10,
    "n_combinations": 4,
    "n_contexts": 2,
    "seed": 3,
}


def small_config(**sections) -> DataBuildConfig:
    """A fast config on the simulator; keyword arguments replace whole sections."""
    spec = {
        "name": "test-sim",
        "seed": 0,
        "progress": False,
        "source": {"simulate": dict(SIM_SETTINGS)},
        "schema": {
            "columns": {
                "perturbation": "perturbation",
                "cell_context": "cell_context",
                "perturbation_type": "perturbation_type",
                "dose": "dose",
                "batch": "batch",
            }
        },
        "expression": {"transform": "log1p_cp10k", "chunk_size": 256},
        "sentences": {"top_k": 40},
        "split": {"kind": "unseen_single", "test_fraction": 0.3, "validation_fraction": 0.1},
        "pretrain": {"metadata_prefix": ["cell_context", "perturbation"]},
        "sft": {
            "context_noun": "cell_line",
            "tasks": {
                "cell_annotation": {"max_examples": 80, "max_eval_examples": 30},
                "cell_generation": {"max_examples": 40, "max_eval_examples": 20},
                "perturbation_response": {
                    "max_examples": 120,
                    "max_eval_examples": 40,
                    "context": "mixed",
                },
                "perturbation_effect": {"per_group": 2},
                "perturbation_identification": {"max_examples": 80, "max_eval_examples": 30},
            },
        },
        "rl": {"min_cells": 15, "n_reference_sentences": 16, "max_control_cells": 64},
        "de": {"method": "welch"},
    }
    spec.update(sections)
    return DataBuildConfig.from_dict(spec)
