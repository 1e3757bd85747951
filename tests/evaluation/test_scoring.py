import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellrlhf.evaluation.scoring import (
    evaluate_predictions,
    perturbation_kind,
    spearman_brown,
    summarize,
)


def test_real_against_itself_is_perfect(perturbation_adata):
    real = perturbation_adata(seed=1)
    ev = evaluate_predictions(real, real)
    t = ev.per_perturbation.set_index("perturbation")
    assert list(t.index) == ["CEBPA", "G1", "KLF1", "KLF1+CEBPA", "MAPK1"]
    np.testing.assert_allclose(t["pearson_delta"], 1.0)
    np.testing.assert_allclose(t["pearson_delta_top20"], 1.0)
    np.testing.assert_allclose(t["mae"], 0.0, atol=1e-12)
    np.testing.assert_allclose(t["discrimination_score_l1"], 1.0)
    np.testing.assert_allclose(t["overlap_at_N"][t["de_n_real"] > 0], 1.0)
    np.testing.assert_allclose(t["de_direction_match"].dropna(), 1.0)
    assert t.loc["KLF1+CEBPA", "kind"] == "combo" and t.loc["KLF1", "kind"] == "single"
    assert (t["n_pred"] == 40).all() and (t["distinct_fraction"] == 1.0).all()
    assert ev.pred_delta.shape == (5, 30)


def test_each_perturbation_says_whether_the_data_measures_its_targets(perturbation_adata):
    perts = ("control", "G1", "g2", "KLF1", "G1+G3", "G1+KLF1")
    real = perturbation_adata(seed=1, perturbations=perts)
    t = evaluate_predictions(real, real, de=False).per_perturbation.set_index("perturbation")
    # every target a measured gene (any case): what a model could know about an unseen target
    assert t["target_measured"].to_dict() == {
        "G1": True,
        "G1+G3": True,
        "G1+KLF1": False,
        "KLF1": False,
        "g2": True,
    }
    assert "target_measured" not in summarize(t.reset_index()).columns


def test_gene_order_and_extra_genes_do_not_change_results(perturbation_adata):
    real, pred = perturbation_adata(seed=1), perturbation_adata(seed=2, noise=1.0)
    base = evaluate_predictions(pred, real).per_perturbation
    order = np.random.default_rng(0).permutation(pred.n_vars)
    shuffled = pred[:, order].copy()
    got = evaluate_predictions(shuffled, real).per_perturbation
    pd.testing.assert_frame_equal(got, base, check_exact=False, rtol=1e-6)


def test_pseudobulk_predictions_have_no_de_metrics(perturbation_adata):
    real = perturbation_adata(seed=1)
    labels = real.obs["perturbation"].to_numpy()
    perts = [p for p in pd.unique(labels) if p != "control"]
    bulk = np.vstack([real.X[labels == p].mean(0) for p in perts])
    ctrl = real[labels == "control"]
    pred = ad.concat(
        [
            ad.AnnData(bulk, obs=pd.DataFrame({"perturbation": perts}, index=perts), var=real.var),
            ctrl,
        ]
    )
    t = evaluate_predictions(pred, real).per_perturbation
    np.testing.assert_allclose(t["pearson_delta"], 1.0, rtol=1e-6)
    assert (t["n_pred"] == 1).all() and t["distinct_fraction"].isna().all()
    assert t["sampling_reliability"].isna().all()  # one row: no halves to compare
    # one profile cannot be tested against control cells
    for col in (
        "overlap_at_N",
        "overlap_at_50",
        "precision_at_N",
        "de_direction_match",
        "de_n_pred",
    ):
        assert t[col].isna().all(), col
    assert (t["de_n_real"] >= 0).all()


def test_subset_of_perturbations_keeps_all_candidates(perturbation_adata):
    real, pred = perturbation_adata(seed=1), perturbation_adata(seed=2)
    keep = pred.obs["perturbation"].isin(["control", "KLF1"]).to_numpy()
    ev = evaluate_predictions(pred[keep], real, de=False)
    assert ev.per_perturbation["perturbation"].tolist() == ["KLF1"]
    assert ev.params["n_candidates"] == 5
    assert "overlap_at_N" not in ev.per_perturbation


def test_clear_errors(perturbation_adata):
    real = perturbation_adata(seed=1)
    pred = perturbation_adata(seed=2, perturbations=("control", "KLF1", "NEW"), n_cells=5)
    with pytest.raises(ValueError, match="no real cells"):
        evaluate_predictions(pred, real)
    no_ctrl = real[real.obs["perturbation"] != "control"]
    with pytest.raises(ValueError, match="no control cells"):
        evaluate_predictions(no_ctrl, real)
    with pytest.raises(KeyError, match="pert_col"):
        evaluate_predictions(real, real, pert_col="condition")
    renamed = real.copy()
    renamed.var_names = [f"X{i}" for i in range(real.n_vars)]
    with pytest.raises(ValueError, match="share no gene"):
        evaluate_predictions(renamed, real)


def test_summary_rows_and_helpers(perturbation_adata):
    real, pred = perturbation_adata(seed=1), perturbation_adata(seed=2)
    table = evaluate_predictions(pred, real, de=False).per_perturbation
    s = summarize(table)
    assert s["kind"].tolist() == ["all", "single", "combo"]
    assert s["n_perturbations"].tolist() == [5, 4, 1]
    assert s.loc[0, "pearson_delta"] == pytest.approx(table["pearson_delta"].mean())
    two = pd.concat([table.assign(method="a"), table.assign(method="b")])
    assert summarize(two, by=("method",))["method"].tolist() == ["a"] * 3 + ["b"] * 3
    assert perturbation_kind("A+B") == "combo" and perturbation_kind("A") == "single"
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert np.isnan(spearman_brown(-0.1))


def test_collapsed_generator_shows_in_distinct_fraction(perturbation_adata):
    real = perturbation_adata(seed=1)
    pred = real.copy()
    labels = pred.obs["perturbation"].to_numpy()
    first = np.flatnonzero(labels == "KLF1")[0]
    pred.X[labels == "KLF1"] = pred.X[first]
    t = evaluate_predictions(pred, real, de=False).per_perturbation.set_index("perturbation")
    assert t.loc["KLF1", "distinct_fraction"] == pytest.approx(1 / 40)
    assert t.loc["CEBPA", "distinct_fraction"] == 1.0


def test_specific_metrics_need_the_reference_and_score_the_mean_baseline_zero(perturbation_adata):
    from cellrlhf.evaluation.baselines import (
        control_baseline,
        mean_baseline,
        prediction_adata,
        training_mean_delta,
    )

    train = perturbation_adata(seed=3, perturbations=("control", "G1", "KLF1", "MAPK1"))
    real = perturbation_adata(seed=1, perturbations=("control", "CEBPA", "KLF1+CEBPA"))
    plain = evaluate_predictions(real, real, de=False).per_perturbation
    assert plain["pearson_specific"].isna().all() and plain["pearson_specific_top20"].isna().all()
    reference = training_mean_delta(train)
    # real against itself: perfect on the specific change too
    own = evaluate_predictions(real, real, de=False, reference_delta=reference).per_perturbation
    np.testing.assert_allclose(own["pearson_specific"], 1.0)
    np.testing.assert_allclose(own["pearson_specific_top20"], 1.0)
    # the mean baseline predicts nothing specific: exactly 0 on both
    pred = prediction_adata(mean_baseline(train, ["CEBPA", "KLF1+CEBPA"]), real)
    t = evaluate_predictions(pred, real, de=False, reference_delta=reference).per_perturbation
    assert (t["pearson_specific"] == 0.0).all() and (t["pearson_specific_top20"] == 0.0).all()
    assert (t["pearson_delta"].abs() > 0.0).all()
    # ... and the whole average response (a prediction of no change: none of it)
    np.testing.assert_allclose(t["average_response_fraction"], 1.0)
    assert plain["average_response_fraction"].isna().all()
    nothing = prediction_adata(control_baseline(real, ["CEBPA", "KLF1+CEBPA"]), real)
    none = evaluate_predictions(nothing, real, de=False, reference_delta=reference)
    assert (none.per_perturbation["average_response_fraction"] == 0.0).all()
    # the reference as an array in real.var_names order, shuffled Series: same numbers
    as_array = evaluate_predictions(
        pred, real, de=False, reference_delta=reference.to_numpy()
    ).per_perturbation
    shuffled = reference.sample(frac=1.0, random_state=0)
    as_series = evaluate_predictions(pred, real, de=False, reference_delta=shuffled)
    pd.testing.assert_frame_equal(as_array, t)
    pd.testing.assert_frame_equal(as_series.per_perturbation, t)
    with pytest.raises(ValueError, match="no value for 1 evaluation gene"):
        evaluate_predictions(pred, real, de=False, reference_delta=reference.iloc[1:])
    with pytest.raises(ValueError, match="expected \\(30,\\)"):
        evaluate_predictions(pred, real, de=False, reference_delta=np.zeros(3))


def test_sampling_reliability_falls_with_fewer_predicted_cells(perturbation_adata):
    """The same noisy generator, 40 vs 10 cells per perturbation: fewer cells, less reliable."""
    real, pred = perturbation_adata(seed=1), perturbation_adata(seed=2, noise=1.0)
    full = evaluate_predictions(pred, real, de=False).per_perturbation
    labels = pred.obs["perturbation"].to_numpy()
    keep = np.zeros(pred.n_obs, bool)
    for p in pd.unique(labels):
        idx = np.flatnonzero(labels == p)
        keep[idx if p == "control" else idx[:10]] = True
    few = evaluate_predictions(pred[keep].copy(), real, de=False).per_perturbation
    assert full["sampling_reliability"].between(0, 1).all()
    assert (few["sampling_reliability"].fillna(0) < full["sampling_reliability"]).mean() >= 0.8


def test_specific_reliability_measures_the_noise_of_the_specific_change():
    """A prediction whose change is mostly the shared (reference) change: reproducible as a
    change from control, much less so as a change from the reference; the column equals the
    split-half reliability taken against ``max(control + reference, 0)``."""
    from cellrlhf.metrics.sampling_noise import split_half_change_reliability

    rng = np.random.default_rng(0)
    genes, n = 40, 64
    control = np.full(genes, 2.0)
    reference = np.where(np.arange(genes) < 20, 1.5, -1.0)  # the shared response
    specific = rng.normal(0.0, 0.1, genes)  # what is particular to the perturbation
    rows = [control + rng.normal(0, 0.3, genes) for _ in range(n)]
    rows += [control + reference + specific + rng.normal(0, 0.3, genes) for _ in range(n)]
    labels = ["control"] * n + ["P1"] * n
    pred = ad.AnnData(
        np.clip(np.asarray(rows), 0, None).astype(np.float32),
        obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(2 * n)]),
        var=pd.DataFrame(index=[f"G{i}" for i in range(genes)]),
    )
    t = evaluate_predictions(pred, pred, de=False, reference_delta=reference).per_perturbation
    assert t.loc[0, "sampling_reliability"] > 0.99
    assert t.loc[0, "sampling_reliability_specific"] < 0.9
    codes = pred.obs["perturbation"].to_numpy()
    base = np.maximum(pred.X[:n].mean(axis=0) + reference, 0.0)
    expected = split_half_change_reliability(pred.X, codes, np.array(["P1"]), base)
    assert t.loc[0, "sampling_reliability_specific"] == pytest.approx(expected[0])
    plain = evaluate_predictions(pred, pred, de=False).per_perturbation
    assert plain["sampling_reliability_specific"].isna().all()  # no reference: undefined


def test_a_reference_per_perturbation_scores_each_against_its_own_row(perturbation_adata):
    """A DataFrame reference (perturbation x gene, e.g. leave-one-out) gives every perturbation
    the metrics its own row would give as a single reference."""
    real = perturbation_adata(seed=0)
    pred = perturbation_adata(seed=1)
    rng = np.random.default_rng(3)
    perts = ["G1", "KLF1", "CEBPA"]
    rows = pd.DataFrame(rng.normal(0, 0.3, (3, real.n_vars)), index=perts, columns=real.var_names)
    keep = real.obs["perturbation"].isin([*perts, "control"]).to_numpy()
    real, pred = real[keep].copy(), pred[keep].copy()
    table = evaluate_predictions(pred, real, de=False, reference_delta=rows[::-1]).per_perturbation
    columns = ["pearson_specific", "pearson_specific_top20", "average_response_fraction",
               "sampling_reliability_specific"]  # fmt: skip
    for p in perts:
        one = evaluate_predictions(pred, real, de=False, reference_delta=rows.loc[p])
        expected = one.per_perturbation.set_index("perturbation").loc[p, columns]
        got = table.set_index("perturbation").loc[p, columns]
        np.testing.assert_allclose(got.to_numpy(float), expected.to_numpy(float))
    with pytest.raises(ValueError, match="no value for 1 scored perturbation"):
        evaluate_predictions(pred, real, de=False, reference_delta=rows.iloc[:2])


def test_sampling_warnings_name_noisy_models():
    from cellrlhf.evaluation.evaluate import sampling_warnings

    metrics = pd.DataFrame(
        {
            "method": ["sft", "sft", "grpo", "grpo", "mean"],
            "sampling_reliability": [0.5, 0.7, 0.95, 0.9, np.nan],
        }
    )
    lines = sampling_warnings(metrics, ["sft", "grpo"], 64)
    assert len(lines) == 1 and lines[0].startswith("sft:")
    assert "0.60" in lines[0] and "--cells_per_prompt" in lines[0]
    assert "its predicted changes" in lines[0]
    # reliable as a change from control, noisy on what is specific: named as such
    metrics["sampling_reliability_specific"] = [0.9, 0.9, 0.7, 0.5, np.nan]
    lines = sampling_warnings(metrics, ["sft", "grpo"], 64)
    assert [line.split(":")[0] for line in lines] == ["sft", "grpo"]
    assert "its perturbation-specific changes" in lines[1] and "0.60" in lines[1]
