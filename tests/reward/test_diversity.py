import numpy as np
import pytest
import scipy.sparse as sp

from cellrlhf.reward.diversity import (
    distinct_fraction,
    distinct_rows_fraction,
    diversity_metrics,
    token_entropy,
)


def test_distinct_fraction_per_group():
    sentences = ["A B", "a  b", "B A", "C", "C"]
    got = distinct_fraction(sentences, np.array([0, 0, 0, 1, 1]))
    np.testing.assert_allclose(got, [2 / 3, 1 / 2])
    assert distinct_fraction(sentences).tolist() == [3 / 5]


def test_distinct_rows_fraction():
    X = sp.csr_matrix(np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0, 0]]))
    np.testing.assert_allclose(distinct_rows_fraction(X, np.array([0, 0, 0, 1])), [2 / 3, 1.0])


def test_token_entropy_hand_computed():
    # group 0: cells {A, B} and {A, C}: A twice, B and C once -> 1.5 bits
    # group 1: the same cell {B, C} twice -> 1 bit
    X = sp.csr_matrix(np.array([[2.0, 1.0, 0], [2.0, 0, 1.0], [0, 3.0, 1.0], [0, 3.0, 1.0]]))
    got = token_entropy(X, np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(got, [1.5, 1.0])


def test_collapse_shows_in_every_number():
    rng = np.random.default_rng(0)
    varied = sp.csr_matrix(rng.random((8, 50)) * (rng.random((8, 50)) < 0.2))
    collapsed = sp.csr_matrix(np.tile(varied[0].toarray(), (8, 1)))
    a, b = diversity_metrics(varied), diversity_metrics(collapsed)
    assert a.distinct_fraction == 1.0 and b.distinct_fraction == pytest.approx(1 / 8)
    assert b.token_entropy < a.token_entropy
    assert b.unique_gene_fraction < a.unique_gene_fraction
    assert set(a.as_dict("div/")) == {
        "div/distinct_fraction",
        "div/token_entropy",
        "div/unique_gene_fraction",
        "div/n_groups",
    }
