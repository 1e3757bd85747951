"""Shared fixtures of the data-stage tests: a small simulated screen and builds of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cellrlhf.data.build import build_datasets
from tests.fixtures.sim_data import SIM_SETTINGS, small_config


@pytest.fixture(scope="session")
def sim_adata():
    from cellrlhf.data.simulate import simulate_perturbation_data

    return simulate_perturbation_data(**SIM_SETTINGS)


@pytest.fixture(scope="session")
def built_by_kind(tmp_path_factory):
    """One build of the small simulated config per split kind (shared by many tests)."""
    root = tmp_path_factory.mktemp("builds")
    results = {}
    for kind in ("random_cells", "unseen_single", "unseen_combo", "unseen_context"):
        split = {"kind": kind, "test_fraction": 0.3, "validation_fraction": 0.1}
        if kind == "unseen_context":
            split = {"kind": kind, "test_contexts": ["SIM-CL2"], "validation_fraction": 0.1}
        sections = {"split": split}
        if kind == "random_cells":  # 30 % of ~40 cells per group: lower the RL threshold
            sections["rl"] = {"min_cells": 8, "n_reference_sentences": 16, "max_control_cells": 64}
        results[kind] = build_datasets(small_config(**sections), out_dir=root / kind)
    return results


@pytest.fixture()
def real_data_dir() -> Path:
    """The real data directory ($CELLRLHF_DATA_DIR); the test is skipped without the file."""
    value = os.environ.get("CELLRLHF_DATA_DIR", "")
    for directory in value.split(os.pathsep):
        if directory and (Path(directory) / "perturbench_devel.h5ad").exists():
            return Path(directory)
    pytest.skip("perturbench_devel.h5ad not found in $CELLRLHF_DATA_DIR")
