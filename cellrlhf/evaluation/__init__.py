"""The evaluation stage: trained models -> predictions -> one table with baselines and ceilings.

Reads saved outputs only: a built dataset directory (``cellrlhf data build``) and saved model
directories (``cellrlhf sft`` / ``ppo`` / ``grpo``). Python API::

    from cellrlhf.evaluation import real_cells, predict, evaluate_models

    test = real_cells("runs/demo/data", "test", data_dir="../shared/data")
    pred = predict("runs/demo/ppo", "runs/demo/data", real_test=test, cells_per_prompt=64)
    result = evaluate_models("runs/demo/data", {"sft": "runs/demo/sft", "ppo": "runs/demo/ppo"},
                             "runs/demo/eval")

Scoring predictions you made yourself against real cells, next to baselines and ceilings::

    from cellrlhf.evaluation import compare_methods, evaluate_predictions, write_report

Command line: ``cellrlhf predict`` and ``cellrlhf evaluate`` (models with ``--dataset_dir``,
prediction files with ``--real``; :mod:`cellrlhf.evaluation.command`).
Names are imported lazily so that ``cellrlhf --help`` stays fast.
"""

from __future__ import annotations

import importlib

__all__ = [
    "EvalSettings",
    "EvaluationResult",
    "ModelDirError",
    "SourceChecksumError",
    "SourceNotFoundError",
    "compare_methods",
    "evaluate_models",
    "evaluate_predictions",
    "load_eval_settings",
    "predict",
    "real_cells",
    "resolve_model_dirs",
    "write_report",
]

_HOME = {
    "SourceChecksumError": "cellrlhf.evaluation.real_data",
    "SourceNotFoundError": "cellrlhf.evaluation.real_data",
    "real_cells": "cellrlhf.evaluation.real_data",
    "predict": "cellrlhf.evaluation.prediction",
    "EvalSettings": "cellrlhf.evaluation.settings",
    "load_eval_settings": "cellrlhf.evaluation.settings",
    "ModelDirError": "cellrlhf.sft.model_dir",
    "resolve_model_dirs": "cellrlhf.evaluation.model_dirs",
    "EvaluationResult": "cellrlhf.evaluation.evaluate",
    "evaluate_models": "cellrlhf.evaluation.evaluate",
    "compare_methods": "cellrlhf.evaluation.comparison",
    "evaluate_predictions": "cellrlhf.evaluation.scoring",
    "write_report": "cellrlhf.evaluation.eval_report",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'cellrlhf.evaluation' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
