"""Our metrics against Arc Institute's cell-eval (the Virtual Cell Challenge evaluator).

Both sides see the same predicted and real AnnData (real control cells in the real one, the
predictor's control cells in the predicted one). Tolerances: 1e-5 for the continuous metrics
(cell-eval averages float32 matrices with polars, we in float64); DE-based fractions and
ranks must agree exactly (1e-12).
"""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellrlhf.evaluation.scoring import evaluate_predictions

cell_eval = pytest.importorskip("cell_eval")

CONTINUOUS = ("pearson_delta", "mae", "mse", "mae_delta", "mse_delta")
EXACT = (
    "discrimination_score_l1",
    "discrimination_score_l2",
    "discrimination_score_cosine",
    "overlap_at_N",
    "overlap_at_50",
    "precision_at_N",
    "de_direction_match",
    "de_sig_genes_recall",
)


def _cell_eval(pred, real, tmp_path):
    evaluator = cell_eval.MetricsEvaluator(
        pred.copy(),
        real.copy(),
        control_pert="control",
        pert_col="perturbation",
        num_threads=1,
        outdir=str(tmp_path / "cell-eval"),
    )
    results, _ = evaluator.compute(
        profile="full", skip_metrics=["clustering_agreement", "pearson_edistance"], write_csv=False
    )
    return results.to_pandas().set_index("perturbation")


def _compare(pred, real, tmp_path):
    theirs = _cell_eval(pred, real, tmp_path)
    ours = evaluate_predictions(pred, real).per_perturbation.set_index("perturbation")
    assert sorted(ours.index) == sorted(theirs.index)
    theirs = theirs.loc[ours.index]
    for metric in CONTINUOUS:
        np.testing.assert_allclose(
            ours[metric], theirs[metric], rtol=1e-5, atol=1e-5, err_msg=metric
        )
    for metric in EXACT:
        np.testing.assert_allclose(ours[metric], theirs[metric], rtol=0, atol=1e-12, err_msg=metric)
    np.testing.assert_array_equal(ours["de_n_real"], theirs["de_nsig_counts_real"])
    np.testing.assert_array_equal(ours["de_n_pred"], theirs["de_nsig_counts_pred"])
    return ours


@pytest.mark.slow
def test_cells_vs_cells_agree_with_cell_eval(perturbation_adata, tmp_path):
    sizes = (50, 30, 40, 45, 35, 40, 30, 40)
    perts = ("control", "G1", "KLF1", "CEBPA", "KLF1+CEBPA", "MAPK1", "G7", "SET")
    real = perturbation_adata(seed=1, perturbations=perts, n_cells=sizes, effect=0.5, noise=0.7)
    # a noisier predictor that mistakes SET for MAPK1: imperfect discrimination and DE overlap
    pred = perturbation_adata(
        seed=2, perturbations=perts, n_cells=sizes, effect=0.5, noise=0.8, prefix="p"
    )
    labels = pred.obs["perturbation"].to_numpy()
    pred.X[labels == "SET"] = pred.X[labels == "MAPK1"][::-1]
    ours = _compare(pred, real, tmp_path)
    # the case is not trivial: metrics vary across perturbations
    assert ours["discrimination_score_l1"].min() < 1.0
    assert 0 < ours["overlap_at_N"].mean() < 1


@pytest.mark.slow
def test_pseudobulk_baseline_agrees_with_cell_eval(perturbation_adata, tmp_path):
    # cell-eval's baselines repeat one profile per perturbation as many times as real cells
    real = perturbation_adata(seed=3, effect=0.4)
    labels = real.obs["perturbation"].to_numpy()
    ctrl = real[labels == "control"]
    rows, obs = [], []
    mean_delta = np.mean(
        [real.X[labels == p].mean(0) for p in pd.unique(labels) if p != "control"], axis=0
    ) - ctrl.X.mean(0)
    for p in pd.unique(labels):
        if p == "control":
            continue
        n = int((labels == p).sum())
        rows.append(
            np.tile(
                ctrl.X.mean(0) + mean_delta + 0.01 * np.arange(real.n_vars) * (len(p) % 3), (n, 1)
            )
        )
        obs += [p] * n
    pred = ad.concat(
        [
            ad.AnnData(
                np.clip(np.vstack(rows), 0, None).astype(np.float32),
                obs=pd.DataFrame({"perturbation": obs}, index=[f"b{i}" for i in range(len(obs))]),
                var=real.var,
            ),
            ctrl,
        ]
    )
    _compare(pred, real, tmp_path)
