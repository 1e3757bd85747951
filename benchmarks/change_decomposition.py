"""Where a model's predicted change goes: the average response, a bias, or the perturbation.

For every held-out perturbation of one or more ``cellrlhf evaluate`` directories, the model's
predicted change (mean of its sampled cells minus the decoded control the evaluation subtracts)
is split along the context's mean training change ``m`` (what the ``mean`` baseline predicts):

- ``a``: the projection coefficient on ``m`` (1: the whole average response; 0: none of it);
- ``residual / |m|``: the size of what is left, relative to the average response;
- ``r(residual, real specific)``: its correlation with the real change minus ``m`` (what the
  perturbation does beyond the average; > 0: the model knows something about the target);
- ``residual shared``: the mean pairwise correlation of the residuals of the perturbations of one
  run (near 1: a bias the model adds to every answer, not knowledge of a target).

Intervals: 95% percentile bootstrap over perturbations (each perturbation's seeds averaged
first). Command (the evaluation directories of a sweep; each names its dataset directory)::

    python benchmarks/change_decomposition.py runs/single/fold*/seed*/eval --model sft sft_grammar
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def _dense(x) -> np.ndarray:
    return np.asarray(x.todense() if hasattr(x, "todense") else x, dtype=np.float64)


def _mean_rows(adata, mask) -> np.ndarray:
    return _dense(adata[np.asarray(mask)].X).mean(axis=0)


def _context_reference(dataset_dir: str, data_dir: str | None):
    """Real test cells, the real control mean and the mean training change of the context."""
    from cellrlhf.evaluation.real_data import real_cells

    test = real_cells(dataset_dir, "test", data_dir=data_dir, progress=False)
    train = real_cells(dataset_dir, "train", data_dir=data_dir, progress=False)
    labels = train.obs["perturbation"].astype(str).to_numpy()
    control = _mean_rows(train, labels == "control")
    test_labels = test.obs["perturbation"].astype(str).to_numpy()
    if (test_labels == "control").any():
        control = _mean_rows(test, test_labels == "control")
    perts = sorted(set(labels) - {"control"})
    train_control = _mean_rows(train, labels == "control")
    mean_change = np.mean([_mean_rows(train, labels == p) - train_control for p in perts], axis=0)
    return test, control, mean_change


def decompose_run(eval_dir: Path, models, data_dir: str | None) -> tuple[list[dict], dict]:
    """Rows (one per model and held-out perturbation) and each model's residual sharing."""
    import anndata as ad

    manifest = json.loads((eval_dir / "manifest.json").read_text())
    test, control, mean_change = _context_reference(manifest["dataset"]["dir"], data_dir)
    genes = list(test.var_names)
    test_labels = test.obs["perturbation"].astype(str).to_numpy()
    rows, shared = [], {}
    for model in models:
        path = eval_dir / "predictions" / f"{model}.h5ad"
        if not path.is_file():
            continue
        pred = ad.read_h5ad(path)[:, genes]
        labels = pred.obs["perturbation"].astype(str).to_numpy()
        is_control = pred.obs["split_kind"].astype(str).to_numpy() == "control"
        pred_control = _mean_rows(pred, is_control)
        residuals = []
        for pert in sorted(set(labels[~is_control])):
            change = _mean_rows(pred, (labels == pert) & ~is_control) - pred_control
            real = _mean_rows(test, test_labels == pert) - control
            a = float(change @ mean_change / (mean_change @ mean_change))
            residual = change - a * mean_change
            residuals.append(residual)
            rows.append(
                {
                    "run": str(eval_dir),
                    "model": model,
                    "perturbation": pert,
                    "a": a,
                    "residual_over_mean": float(
                        np.linalg.norm(residual) / np.linalg.norm(mean_change)
                    ),
                    "r_residual_specific": float(np.corrcoef(residual, real - mean_change)[0, 1]),
                    "r_change_real": float(np.corrcoef(change, real)[0, 1]),
                    "r_mean_real": float(np.corrcoef(mean_change, real)[0, 1]),
                }
            )
        if len(residuals) > 1:
            cc = np.corrcoef(np.array(residuals))
            n = len(residuals)
            shared[model] = float((cc.sum() - n) / (n * n - n))
    return rows, shared


def _interval(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    from scipy.stats import bootstrap

    if len(values) < 3:
        return float(values.mean()), float("nan"), float("nan")
    ci = bootstrap((values,), np.mean, n_resamples=2000, method="percentile", random_state=seed)
    return (
        float(values.mean()),
        float(ci.confidence_interval.low),
        float(ci.confidence_interval.high),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("evals", nargs="+", help="cellrlhf evaluate output directories")
    parser.add_argument("--model", nargs="+", default=["sft"], help="prediction names to split")
    parser.add_argument("--data-dir", default=None, help="where the source data sets live")
    parser.add_argument("--csv", default=None, help="also write the per-perturbation rows here")
    args = parser.parse_args()

    rows, shared = [], {}
    for eval_dir in args.evals:
        run_rows, run_shared = decompose_run(Path(eval_dir), args.model, args.data_dir)
        rows += run_rows
        for model, value in run_shared.items():
            shared.setdefault(model, []).append(value)
    table = pd.DataFrame(rows)
    if args.csv:
        table.to_csv(args.csv, index=False)
    columns = ["a", "residual_over_mean", "r_residual_specific", "r_change_real", "r_mean_real"]
    print(f"{len(args.evals)} runs, {table['perturbation'].nunique()} perturbations")
    print("| model | " + " | ".join(columns) + " | residual shared |")
    print("|---" * (len(columns) + 2) + "|")
    for model, group in table.groupby("model", sort=False):
        per_pert = group.groupby("perturbation")[columns].mean()
        cells = [
            "{:.3f} ({:.3f} to {:.3f})".format(*_interval(per_pert[c].to_numpy())) for c in columns
        ]
        print(
            f"| {model} | " + " | ".join(cells) + f" | {np.mean(shared.get(model, [np.nan])):.2f} |"
        )


if __name__ == "__main__":
    main()
