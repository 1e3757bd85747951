import numpy as np
import pytest
from sklearn.metrics import pairwise_distances as sk_pairwise

from cellrlhf.evaluation.discrimination import (
    discrimination_score,
    pairwise_distances,
    target_gene_mask,
)

REAL = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(6, 10))
    np.testing.assert_allclose(discrimination_score(real, real), 1.0)


def test_rank_hand_computed():
    # prediction for perturbation 0 is at distance 2 from it, 1 from the two others
    got = discrimination_score(np.array([[2.0, 0.0]]), REAL, true_index=np.array([0]))
    assert got[0] == pytest.approx(1 - 2 / 3)


def test_ties_count_half():
    # equally far (0.5) from perturbations 0 and 1
    got = discrimination_score(np.array([[0.5, 0.0]]), REAL, true_index=np.array([0]))
    assert got[0] == pytest.approx(1 - 0.5 / 3)


def test_target_genes_are_excluded():
    genes = ["a", "B", "c"]
    mask = target_gene_mask(["A+C", "b", "control", "X"], genes)
    assert mask.tolist() == [
        [True, False, True],
        [False, True, False],
        [False, False, False],
        [False, False, False],
    ]
    # the target gene (column 0) makes the prediction look like the wrong perturbation
    real = np.array([[5.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    pred = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert discrimination_score(pred, real)[0] == pytest.approx(0.5)
    exclude = np.array([[True, False, False], [False, False, False]])
    assert discrimination_score(pred, real, exclude=exclude)[0] == pytest.approx(1.0)


@pytest.mark.parametrize("metric", ["l1", "l2", "cosine"])
def test_distances_match_sklearn(metric):
    rng = np.random.default_rng(1)
    q, r = rng.normal(size=(3, 7)), rng.normal(size=(5, 7))
    r[0] = 0.0
    sk = {"l1": "manhattan", "l2": "euclidean", "cosine": "cosine"}[metric]
    np.testing.assert_allclose(
        pairwise_distances(q, r, metric), sk_pairwise(q, r, metric=sk), atol=1e-10
    )


def test_bad_inputs():
    with pytest.raises(ValueError, match="metric"):
        discrimination_score(REAL, REAL, metric="l3")
    with pytest.raises(ValueError, match="gene counts"):
        discrimination_score(REAL[:, :1], REAL)
