"""The ``data`` stage: AnnData in, training-ready Hugging Face datasets out.

Python API (the ``cellrlhf data`` command calls the same functions)::

    from cellrlhf.data import load_config, build_datasets, open_dataset_dir

    config = load_config("configs/data/norman_mcfaline.yaml", ["split.kind=unseen_combo"])
    result = build_datasets(config, out_dir="outputs/data/norman", data_dir="../shared/data")
    built = open_dataset_dir(result.path)         # .pretrain, .sft, .rl, .splits, .manifest

Also: :func:`load_anndata` (registered data sets, verified by sha256, or local files),
:func:`simulate_perturbation_data` (SIMULATED screens for tests and offline use),
:func:`standardize_obs` (the perturbation schema), :func:`make_splits`, :func:`balanced_sample`,
:func:`check_no_leakage`. Names are imported lazily so that ``cellrlhf --help`` stays fast.
"""

from __future__ import annotations

import importlib

__all__ = [
    "BuildResult",
    "DataBuildConfig",
    "DatasetDir",
    "DatasetDirError",
    "LeakageError",
    "REGISTRY",
    "SchemaError",
    "SchemaMapping",
    "SplitConfig",
    "balanced_sample",
    "build_datasets",
    "check_no_leakage",
    "fetch",
    "load_anndata",
    "load_config",
    "make_splits",
    "open_dataset_dir",
    "simulate_perturbation_data",
    "standardize_obs",
]

_HOME = {
    "BuildResult": "cellrlhf.data.build",
    "build_datasets": "cellrlhf.data.build",
    "DatasetDir": "cellrlhf.data.layout",
    "DatasetDirError": "cellrlhf.data.layout",
    "open_dataset_dir": "cellrlhf.data.layout",
    "DataBuildConfig": "cellrlhf.data.config",
    "load_config": "cellrlhf.data.config",
    "LeakageError": "cellrlhf.data.leakage",
    "check_no_leakage": "cellrlhf.data.leakage",
    "REGISTRY": "cellrlhf.data.registry",
    "fetch": "cellrlhf.data.registry",
    "SchemaError": "cellrlhf.data.schema",
    "SchemaMapping": "cellrlhf.data.schema",
    "standardize_obs": "cellrlhf.data.schema",
    "SplitConfig": "cellrlhf.data.splits",
    "make_splits": "cellrlhf.data.splits",
    "balanced_sample": "cellrlhf.data.balance",
    "load_anndata": "cellrlhf.data.loading",
    "simulate_perturbation_data": "cellrlhf.data.simulate",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'cellrlhf.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
