"""Read the evaluation directories of an experiment (folds x seeds) for the aggregate step.

Each directory is what ``cellrlhf evaluate`` wrote, opened with
:func:`~cellrlhf.evaluation.eval_dir.open_evaluation_dir` (its ``metrics.csv`` has one row per
method, cell context and perturbation). Every run gets:

- a *setting*: the held-out kind and the data set's name (``"unseen_single (norman)"``), from
  the manifest; a trailing ``_fold<i>`` / ``-f<i>`` in the name is dropped so the folds of one
  experiment share a setting;
- a *fold* and a *seed*: from the evaluation manifest (``fold`` / ``seed``, top level or under
  ``run``), else the data set's manifest (``config.split.fold``), else the label
  (``fold0_seed1``, ``f0_s1``, ``eval_f2``), else 0.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cellrlhf.data.layout import read_dataset_manifest
from cellrlhf.evaluation.eval_dir import EvaluationDirError, open_evaluation_dir

__all__ = [
    "EvaluationRun",
    "is_fit_check",
    "parse_eval_args",
    "read_evaluation_run",
    "read_evaluation_runs",
    "setting_name",
]

_FOLD = re.compile(r"(?:^|[_\-./])(?:fold|f)[_\-]?(\d+)(?=$|[_\-./])", re.IGNORECASE)
_SEED = re.compile(r"(?:^|[_\-./])(?:seed|s)[_\-]?(\d+)(?=$|[_\-./])", re.IGNORECASE)
_FOLD_SUFFIX = re.compile(r"[_\-.]?(?:fold|f)[_\-]?\d+$", re.IGNORECASE)


@dataclass
class EvaluationRun:
    """One evaluation directory: where it is, what it belongs to, and its per-perturbation rows.

    Attributes
    ----------
    label
        The name given on the command line (``fold0_seed1``).
    path
        The evaluation directory.
    setting, dataset, split_kind
        The experiment it belongs to (held-out kind x data set name).
    fold, seed
        Its place in the sweep.
    simulated
        Whether the data set was simulated.
    baselines
        Baselines the evaluation was asked for (those without a row do not apply).
    identical_models
        Groups of models with byte-identical weights.
    metrics
        ``metrics.csv``.
    """

    label: str
    path: Path
    setting: str
    dataset: str
    split_kind: str
    fold: int
    seed: int
    simulated: bool
    baselines: tuple[str, ...]
    identical_models: list[list[str]]
    metrics: pd.DataFrame
    manifest: dict


def setting_name(split_kind: str, dataset: str, prompts: str = "test") -> str:
    """``"unseen_single (norman)"``; an evaluation of the validation prompts (``prompts``, the
    split its ``settings`` record) is its own setting, ``"unseen_single (norman) [VALIDATION
    prompts]"``, so that it is never pooled with, or read as, the test figures."""
    name = f"{split_kind} ({dataset})"
    return name if prompts == "test" else f"{name} [{prompts.upper()} prompts]"


def is_fit_check(setting: str) -> bool:
    """Whether a setting name is that of evaluations of the training prompts (the fit check of
    ``cellrlhf evaluate --split train``)."""
    return setting.endswith(" [TRAIN prompts]")


def parse_eval_args(values: Sequence[str]) -> dict[str, Path]:
    """``["fold0_seed0=runs/x/eval", ...]`` -> ``{"fold0_seed0": Path(...)}``.

    A value without ``=`` is labelled by its directory name.
    """
    out: dict[str, Path] = {}
    for value in values:
        label, sep, path = value.partition("=")
        if not sep:
            label, path = Path(value).name or value, value
        if not label or not path:
            raise ValueError(
                f"--eval {value!r}: expected LABEL=DIR (e.g. fold0_seed1=runs/x/eval)."
            )
        if label in out:
            raise ValueError(
                f"--eval label {label!r} is given twice; give every run its own label."
            )
        out[label] = Path(path)
    return out


def _number(*candidates) -> int | None:
    for value in candidates:
        if value is not None and not isinstance(value, bool):
            try:
                return int(value)
            except (TypeError, ValueError):
                continue
    return None


def _from_label(pattern: re.Pattern, label: str) -> int | None:
    match = pattern.search(label)
    return int(match.group(1)) if match else None


def read_evaluation_run(label: str, path: str | os.PathLike) -> EvaluationRun:
    """Read one evaluation directory.

    Raises
    ------
    EvaluationDirError
        The directory, its ``manifest.json`` or its ``metrics.csv`` is missing, it is not a
        ``cellrlhf evaluate`` output, or its table lacks the identifying columns.
    """
    try:
        evaluation = open_evaluation_dir(path)
        metrics = evaluation.metrics
    except EvaluationDirError as err:
        raise EvaluationDirError(f"evaluation {label!r} (--eval {label}=DIR): {err}") from err
    manifest, dataset = evaluation.manifest, evaluation.dataset
    data_manifest = {}
    if evaluation.dataset_dir is not None:
        data_manifest = read_dataset_manifest(evaluation.dataset_dir, required=False) or {}
    split_cfg = (data_manifest.get("config") or {}).get("split") or {}
    run = manifest.get("run") or {}
    fold = _number(
        manifest.get("fold"), run.get("fold"), dataset.get("fold"), split_cfg.get("fold")
    )
    seed = _number(manifest.get("seed"), run.get("seed"))
    name = str(dataset.get("name") or data_manifest.get("name") or "dataset")
    split_kind = str(dataset.get("split_kind") or (data_manifest.get("split") or {}).get("kind"))
    name = _FOLD_SUFFIX.sub("", name) or name
    return EvaluationRun(
        label=label,
        path=evaluation.path,
        setting=setting_name(
            split_kind, name, str((manifest.get("settings") or {}).get("split") or "test")
        ),
        dataset=name,
        split_kind=split_kind,
        fold=fold if fold is not None else (_from_label(_FOLD, label) or 0),
        seed=seed if seed is not None else (_from_label(_SEED, label) or 0),
        simulated=evaluation.simulated,
        baselines=evaluation.baselines,
        identical_models=evaluation.identical_models,
        metrics=metrics,
        manifest=manifest,
    )


def read_evaluation_runs(evals: Mapping[str, str | os.PathLike]) -> list[EvaluationRun]:
    """Read every evaluation directory; refuse two runs with the same setting, fold and seed."""
    if not evals:
        raise ValueError("no evaluation directory given: pass --eval LABEL=DIR (at least one).")
    runs = [read_evaluation_run(label, path) for label, path in evals.items()]
    seen: dict[tuple, str] = {}
    for run in runs:
        key = (run.setting, run.fold, run.seed)
        if key in seen:
            raise ValueError(
                f"evaluations {seen[key]!r} and {run.label!r} are both {run.setting}, fold "
                f"{run.fold}, seed {run.seed}; label them fold<i>_seed<j> (or record fold and "
                "seed in their manifests) so every run is counted once."
            )
        seen[key] = run.label
    return runs
