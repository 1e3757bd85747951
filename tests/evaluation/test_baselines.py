import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellrlhf.evaluation.baselines import (
    additive_baseline,
    control_baseline,
    mean_baseline,
    nearest_baseline,
    predict_baselines,
    prediction_adata,
    representation_ceiling,
    ridge_baseline,
    split_half,
)
from tests.fixtures.perturbation_cells import context_profile_adata

# every cell of a group has the same profile, so pseudo-bulk deltas are exact
PROFILES = {
    "control": [1, 1, 1, 1],
    "A": [2, 1, 1, 1],  # delta [1, 0, 0, 0]
    "B": [1, 3, 1, 1],  # delta [0, 2, 0, 0]
    "A+B": [2, 3, 1, 2],  # delta [1, 2, 0, 1]
    "D": [1, 1, 0, 1],  # delta [0, 0, -1, 0]
}
MEAN_DELTA = np.array([0.5, 1.0, -0.25, 0.25])


@pytest.fixture
def train():
    labels = [p for p in PROFILES for _ in range(3)]
    X = np.asarray([PROFILES[p] for p in labels], dtype=np.float32)
    obs = pd.DataFrame({"perturbation": labels}, index=[f"t{i}" for i in range(len(labels))])
    return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=["g0", "g1", "g2", "g3"]))


def test_control_and_mean(train):
    got = control_baseline(train, ["X", "Y"])
    assert got.perturbations.tolist() == ["X", "Y"] and not got.deltas.any()
    np.testing.assert_allclose(mean_baseline(train, ["X"]).deltas, [MEAN_DELTA])
    assert mean_baseline(train, ["X"]).genes.tolist() == ["g0", "g1", "g2", "g3"]


def test_additive_only_predicts_combinations_of_trained_singles(train):
    got = additive_baseline(train, ["A+D", "D+B", "E", "A+E", "A"])
    assert got.perturbations.tolist() == ["A+D", "D+B"]
    np.testing.assert_allclose(got.deltas, [[1, 0, -1, 0], [0, 2, -1, 0]])


def test_nearest_by_shared_targets_not_applicable_without(train):
    got = nearest_baseline(train, ["A+E", "E", "B", "A+B+D"])
    assert got.perturbations.tolist() == ["A+E", "B", "A+B+D"]
    np.testing.assert_allclose(got.deltas[0], [1, 0, 0, 0])  # A (1/2) beats A+B (1/3)
    np.testing.assert_allclose(got.deltas[1], [0, 2, 0, 0])  # itself
    np.testing.assert_allclose(got.deltas[2], [1, 2, 0, 1])  # A+B: 2/3
    # nothing shared: not applicable (no silent fallback to the mean under this name)
    assert got.not_applicable == ("E",)


def test_ridge_fits_seen_targets_and_does_not_predict_unseen(train):
    got = ridge_baseline(train, ["A", "B", "D", "E", "A+D", "B+D", "E+D"], alphas=(1e-3,))
    assert got.params["alpha"] == 1e-3
    assert got.not_applicable == ("E",)  # no target trained; E+D has D
    deltas = dict(zip(got.perturbations, got.deltas, strict=True))
    # seen singles: close to their own response (A+B's extra g3 is spread over A and B)
    np.testing.assert_allclose(deltas["D"], [0, 0, -1, 0], atol=0.05)
    assert np.corrcoef(deltas["A"], [1, 0, 0, 0])[0, 1] > 0.8
    # linear in the targets: (A+D) + B = A + (B+D)
    np.testing.assert_allclose(deltas["A+D"] + deltas["B"], deltas["A"] + deltas["B+D"], atol=1e-9)
    chosen = ridge_baseline(train, ["A"])
    assert chosen.params["alpha"] in (0.01, 0.1, 1.0, 10.0, 100.0)
    features = {"A": [1.0, 0], "B": [0, 1.0], "D": [1.0, 1.0], "E": [1.0, 0]}
    with_features = ridge_baseline(train, ["E", "F"], target_features=features)
    assert with_features.perturbations.tolist() == ["E"] and with_features.deltas.shape == (1, 4)
    assert with_features.not_applicable == ("F",)


def test_predict_baselines_and_prediction_adata(train):
    test_perts = ["A+D", "E"]
    all_preds = predict_baselines(train, test_perts)
    assert set(all_preds) == {
        "control",
        "mean",
        "additive",
        "ridge",
        "nearest",
        "context_transfer",
    }
    # no cell contexts given: context_transfer applies to nothing
    assert all_preds["context_transfer"].not_applicable == ("A+D", "E")
    assert all_preds["additive"].not_applicable == ("E",)
    pred = prediction_adata(all_preds["mean"], train)
    assert pred.obs["perturbation"].tolist() == ["A+D", "E"] + ["control"] * 3
    np.testing.assert_allclose(pred.X[0], np.maximum(1 + MEAN_DELTA, 0))
    np.testing.assert_allclose(pred.X[2:], 1.0)
    clipped = prediction_adata(additive_baseline(train, ["A+D"]), train)
    assert clipped.X.min() >= 0
    with pytest.raises(ValueError, match="unknown baseline"):
        predict_baselines(train, test_perts, methods=["oracle"])
    with pytest.raises(ValueError, match="no control cells"):
        prediction_adata(all_preds["mean"], train[train.obs["perturbation"] == "A"])


def test_split_half_is_disjoint_and_seeded(perturbation_adata):
    real = perturbation_adata(seed=0, n_cells=(9, 4, 1, 6, 6, 5))
    a, b = split_half(real, seed=3)
    assert set(a.obs_names).isdisjoint(b.obs_names)
    counts = a.obs["perturbation"].value_counts()
    assert counts["control"] == 4 and counts["G1"] == 2 and "KLF1" not in counts
    assert (a.obs["perturbation"].value_counts() == b.obs["perturbation"].value_counts()).all()
    a2, _ = split_half(real, seed=3)
    assert list(a2.obs_names) == list(a.obs_names)
    a3, _ = split_half(real, seed=4)
    assert list(a3.obs_names) != list(a.obs_names)


def test_representation_ceiling_decodes_real_cells(perturbation_adata):
    from cellrlhf.cell2text.decoder import ExpressionDecoder
    from cellrlhf.evaluation.scoring import evaluate_predictions

    real = perturbation_adata(seed=0, effect=0.8, noise=0.4)
    decoder = ExpressionDecoder.fit(real, method="per_gene")
    decoded = representation_ceiling(real, decoder)
    assert decoded.shape == real.shape
    assert list(decoded.var_names) == list(real.var_names)
    assert list(decoded.obs["perturbation"]) == list(real.obs["perturbation"])
    # the decoder reproduces every expressed gene, nothing else
    assert (decoded.X.toarray() > 0).sum() <= (real.X > 0).sum()
    t = evaluate_predictions(decoded, real, de=False).per_perturbation
    assert t["pearson_delta"].min() > 0.5
    assert (t["discrimination_score_l1"] == 1.0).all()


def test_control_baseline_change_is_exactly_zero_on_many_sparse_control_cells():
    # float32 means of many control cells differ from float64 ones by more than rounding
    # tolerance; the prediction must keep "no change" exactly zero (was pearson_delta 0.045)
    import scipy.sparse as sp

    from cellrlhf.evaluation.scoring import evaluate_predictions

    rng = np.random.default_rng(0)
    n, g = 30000, 50
    X = np.log1p(rng.gamma(0.5, 3, (n, g)) * (rng.random((n, g)) < 0.1)).astype(np.float32)
    labels = ["control"] * (n - 200) + ["A"] * 100 + ["B"] * 100
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(n)])
    real = ad.AnnData(
        sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)])
    )
    pred = prediction_adata(control_baseline(real, ["A", "B"]), real)
    t = evaluate_predictions(pred, real, de=False).per_perturbation
    assert t["pearson_delta"].isna().all()
    assert t["pearson_delta_top20"].isna().all()
    assert (t["mae_delta"] > 0).all()


CONTEXT_PROFILES = {  # (context, perturbation) -> profile; control differs per context
    ("X", "control"): [1, 1, 1],
    ("X", "P"): [2, 1, 1],  # delta [1, 0, 0]
    ("X", "Q"): [1, 1, 3],  # delta [0, 0, 2]
    ("Y", "control"): [2, 2, 2],
    ("Y", "P"): [2, 4, 2],  # delta [0, 2, 0]
    ("W", "R"): [5, 5, 5],  # no control cells in W: nothing to measure a change against
    ("Z", "control"): [0, 0, 0],
}


@pytest.fixture
def contexts_train():
    return context_profile_adata(CONTEXT_PROFILES, 2)


def test_context_transfer_averages_the_other_contexts_changes(contexts_train):
    from cellrlhf.evaluation.baselines import context_transfer_baseline

    got = context_transfer_baseline(contexts_train, ["P", "Q", "R"], context="Z")
    assert got.perturbations.tolist() == ["P", "Q"] and got.not_applicable == ("R",)
    np.testing.assert_allclose(got.deltas, [[0.5, 1.0, 0.0], [0.0, 0.0, 2.0]])
    assert got.params["n_source_contexts"] == [2, 1]
    # the context itself is never a source: Q is trained in X only
    own = context_transfer_baseline(contexts_train, ["P", "Q"], context="X")
    assert own.perturbations.tolist() == ["P"] and own.not_applicable == ("Q",)
    np.testing.assert_allclose(own.deltas, [[0.0, 2.0, 0.0]])
    with pytest.raises(KeyError, match="cell context of each training cell"):
        context_transfer_baseline(contexts_train, ["P"], context="Z", context_col="line")


def test_predict_baselines_in_one_context_of_many(contexts_train):
    got = predict_baselines(
        contexts_train, ["P", "Q"], methods=("mean", "context_transfer"), context="X"
    )
    np.testing.assert_allclose(got["mean"].deltas, [[0.5, 0.0, 1.0]] * 2)  # X's own mean
    np.testing.assert_allclose(got["context_transfer"].deltas, [[0.0, 2.0, 0.0]])
    with pytest.raises(KeyError, match="pass context_col"):
        predict_baselines(contexts_train, ["P"], context="X", context_col="line")
