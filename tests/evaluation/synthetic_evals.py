"""Hand-made evaluation directories (what ``cellrlhf evaluate`` writes: manifest.json and
metrics.csv) with values chosen so that aggregates can be computed by hand."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

MODELS = {"sft", "sft_grammar", "grpo", "ppo", "grpo_last"}


def method_type(method: str) -> str:
    if method in MODELS:
        return "model"
    if method.startswith(("split_half", "representation_")):
        return "ceiling"
    return "baseline"


def metrics_table(
    values: Mapping[str, Sequence[float]],
    *,
    perturbations: Sequence[str],
    metric: str = "pearson_specific",
    context: str = "K562",
    extra: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> pd.DataFrame:
    """One row per (method, perturbation) in one context; ``values[method]`` gives ``metric``,
    ``extra[other_metric][method]`` further metrics (NaN where not given)."""
    rows = []
    for method, column in values.items():
        for i, pert in enumerate(perturbations):
            row = {
                "method": method,
                "method_type": method_type(method),
                "cell_context": context,
                "perturbation": pert,
                "kind": "combo" if "+" in pert else "single",
                "n_pred": 8,
                "n_real": 40,
                metric: column[i],
            }
            for other, by_method in (extra or {}).items():
                row[other] = by_method.get(method, [np.nan] * len(perturbations))[i]
            rows.append(row)
    return pd.DataFrame(rows)


def write_eval_dir(
    path: Path,
    table: pd.DataFrame,
    *,
    name: str = "norman",
    split_kind: str = "unseen_single",
    simulated: bool = False,
    baselines: Sequence[str] = ("control", "mean", "additive", "ridge"),
    identical: Sequence[Sequence[str]] = (),
    extra_manifest: Mapping | None = None,
) -> Path:
    """Write ``metrics.csv`` and an evaluation ``manifest.json`` into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    table.to_csv(path / "metrics.csv", index=False)
    models = sorted(set(table.loc[table["method_type"] == "model", "method"]))
    manifest = {
        "format": "cellrlhf.evaluation",
        "version": 1,
        "simulated": simulated,
        "dataset": {"dir": str(path / "no_data"), "name": name, "split_kind": split_kind},
        "models": {m: {"stage": m} for m in models},
        "identical_models": [list(g) for g in identical],
        "settings": {"baselines": list(baselines), "seed": 0},
        **(extra_manifest or {}),
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path
