"""Where a model's predicted change goes: the average response, a bias, or the perturbation.

For every held-out perturbation of one or more ``cellrlhf evaluate`` directories, the model's
predicted change (mean of its sampled cells minus the decoded control the evaluation subtracts)
is split along the context's mean training change ``m`` (what the ``mean`` baseline predicts):

- ``a``: the projection coefficient on ``m`` (1: the whole average response; 0: none of it);
- ``residual / |m|``: the size of what is left, relative to the average response;
- ``r(residual, real specific)``: its correlation with the real change minus ``m`` (what the
  perturbation does beyond the average; > 0: the model knows something about the target);
- ``residual shared``: the mean pairwise correlation of the residuals of the perturbations of one
  run (near 1: a bias the model adds to every answer, not knowledge of a target);
- with several cell contexts (``unseen_pair``), everything per context (its control, its ``m``),
  and against the same perturbation's mean change in the other contexts ``t`` (what
  ``context_transfer`` predicts and ``other_contexts`` evidence shows):
  ``r(residual, t - m)`` (does the answer follow the evidence?), ``r(t - m, real specific)``
  (how much the evidence says about this pair) and ``r(change, t)``.

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


def _contexts(adata) -> np.ndarray:
    obs = adata.obs
    if "cell_context" not in obs:
        return np.full(adata.n_obs, "", dtype=object)
    return obs["cell_context"].astype(str).to_numpy()


def _context_reference(dataset_dir: str, data_dir: str | None) -> tuple[object, dict]:
    """Real test cells and, per cell context: the real control mean, the mean training change
    ``m`` and, per perturbation trained in other contexts, its mean change there (what
    ``context_transfer`` and ``other_contexts`` evidence carry)."""
    from cellrlhf.evaluation.real_data import real_cells

    test = real_cells(dataset_dir, "test", data_dir=data_dir, progress=False)
    train = real_cells(dataset_dir, "train", data_dir=data_dir, progress=False)
    labels, where = train.obs["perturbation"].astype(str).to_numpy(), _contexts(train)
    test_labels, test_where = test.obs["perturbation"].astype(str).to_numpy(), _contexts(test)
    changes: dict[tuple[str, str], np.ndarray] = {}
    controls: dict[str, np.ndarray] = {}
    for ctx in sorted(set(where)):
        in_ctx = where == ctx
        controls[ctx] = _mean_rows(train, in_ctx & (labels == "control"))
        for pert in sorted(set(labels[in_ctx]) - {"control"}):
            changes[pert, ctx] = _mean_rows(train, in_ctx & (labels == pert)) - controls[ctx]
    reference = {}
    for ctx in sorted(set(where)):
        own = [c for (_, k), c in changes.items() if k == ctx]
        control = controls[ctx]
        if ((test_labels == "control") & (test_where == ctx)).any():
            control = _mean_rows(test, (test_labels == "control") & (test_where == ctx))
        transfer = {}
        for pert in {p for p, _ in changes}:
            others = [c for (q, k), c in changes.items() if q == pert and k != ctx]
            if others:
                transfer[pert] = np.mean(others, axis=0)
        reference[ctx] = {"control": control, "mean_change": np.mean(own, axis=0),
                          "transfer": transfer}  # fmt: skip
    return test, reference


def _r(x: np.ndarray, y: np.ndarray) -> float:
    from cellrlhf.metrics.fidelity import pearson_rows

    return float(pearson_rows(x, y))


def decompose_run(eval_dir: Path, models, data_dir: str | None) -> tuple[list[dict], dict]:
    """Rows (one per model and held-out perturbation) and each model's residual sharing."""
    import anndata as ad

    manifest = json.loads((eval_dir / "manifest.json").read_text())
    test, reference = _context_reference(manifest["dataset"]["dir"], data_dir)
    genes = list(test.var_names)
    test_labels, test_where = test.obs["perturbation"].astype(str).to_numpy(), _contexts(test)
    rows, shared = [], {}
    for model in models:
        path = eval_dir / "predictions" / f"{model}.h5ad"
        if not path.is_file():
            continue
        pred = ad.read_h5ad(path)[:, genes]
        labels, where = pred.obs["perturbation"].astype(str).to_numpy(), _contexts(pred)
        is_control = pred.obs["split_kind"].astype(str).to_numpy() == "control"
        pred_controls = {ctx: _mean_rows(pred, is_control & (where == ctx)) for ctx in set(where)}
        residuals = []
        for pert, ctx in sorted(set(zip(labels[~is_control], where[~is_control], strict=True))):
            ref = reference[ctx]
            mean_change = ref["mean_change"]
            change = _mean_rows(pred, (labels == pert) & (where == ctx) & ~is_control)
            change = change - pred_controls[ctx]
            real = _mean_rows(test, (test_labels == pert) & (test_where == ctx)) - ref["control"]
            a = float(change @ mean_change / (mean_change @ mean_change))
            residual = change - a * mean_change
            residuals.append(residual)
            transfer = ref["transfer"].get(pert)
            specific = real - mean_change
            rows.append(
                {
                    "run": str(eval_dir),
                    "model": model,
                    "perturbation": f"{pert} | {ctx}" if ctx else pert,
                    "a": a,
                    "residual_over_mean": float(
                        np.linalg.norm(residual) / np.linalg.norm(mean_change)
                    ),
                    "r_residual_specific": _r(residual, specific),
                    "r_change_real": _r(change, real),
                    "r_mean_real": _r(mean_change, real),
                    # other cell contexts: does the answer follow the same perturbation there?
                    "r_residual_transfer": np.nan if transfer is None
                    else _r(residual, transfer - mean_change),
                    "r_transfer_specific": np.nan if transfer is None
                    else _r(transfer - mean_change, specific),
                    "r_change_transfer": np.nan if transfer is None else _r(change, transfer),
                }
            )  # fmt: skip
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
    transfer = ["r_residual_transfer", "r_transfer_specific", "r_change_transfer"]
    columns += [c for c in transfer if table[c].notna().any()]  # held-out pairs (unseen_pair)
    print(f"{len(args.evals)} runs, {table['perturbation'].nunique()} perturbations")
    print("| model | " + " | ".join(columns) + " | residual shared |")
    print("|---" * (len(columns) + 2) + "|")
    for model, group in table.groupby("model", sort=False):
        per_pert = group.groupby("perturbation")[columns].mean()
        cells = [
            "{:.3f} ({:.3f} to {:.3f})".format(*_interval(per_pert[c].dropna().to_numpy()))
            for c in columns
        ]
        print(
            f"| {model} | " + " | ".join(cells) + f" | {np.mean(shared.get(model, [np.nan])):.2f} |"
        )


if __name__ == "__main__":
    main()
