"""Leave-one-out baselines and reference: scoring perturbations that were trained without
showing any baseline the answer (exact values on cells whose groups have one profile each)."""

import numpy as np
import pytest

from cellrlhf.evaluation.baselines import predict_baselines
from cellrlhf.evaluation.comparison import compare_methods
from cellrlhf.evaluation.leave_one_out import (
    leave_one_out_baselines,
    leave_one_out_reference,
    without_perturbation,
)
from tests.fixtures.perturbation_cells import context_profile_adata

PROFILES = {  # (context, perturbation) -> profile
    ("X", "control"): [1, 1, 1, 1],
    ("X", "A"): [2, 1, 1, 1],  # delta [1, 0, 0, 0]
    ("X", "B"): [1, 3, 1, 1],  # delta [0, 2, 0, 0]
    ("X", "A+B"): [2, 3, 1, 2],  # delta [1, 2, 0, 1]
    ("X", "D"): [1, 1, 0, 1],  # delta [0, 0, -1, 0]
    ("Y", "control"): [2, 2, 2, 2],
    ("Y", "A"): [2, 2, 4, 2],  # delta [0, 0, 2, 0]: A's only other context
}
# the mean change of X's perturbations other than the one named
LOO_MEAN = {"A": [1 / 3, 4 / 3, -1 / 3, 1 / 3], "B": [2 / 3, 2 / 3, -1 / 3, 1 / 3]}


@pytest.fixture
def train():
    return context_profile_adata(PROFILES, 3)


def test_without_perturbation_drops_only_its_cells_in_the_context(train):
    rest = without_perturbation(train, "A", context="X")
    assert rest.n_obs == train.n_obs - 3
    assert ((rest.obs["perturbation"] == "A") & (rest.obs["cell_context"] == "Y")).sum() == 3
    assert "A" not in set(without_perturbation(train, "A").obs["perturbation"])


def test_each_perturbation_is_predicted_without_its_own_cells(train):
    methods = ("mean", "nearest", "additive", "context_transfer")
    loo = leave_one_out_baselines(train, ["A", "B", "A+B"], methods=methods, context="X")
    plain = predict_baselines(train, ["A", "B", "A+B"], methods=methods, context="X")
    np.testing.assert_allclose(
        loo["mean"].deltas, [LOO_MEAN["A"], LOO_MEAN["B"], [1 / 3, 2 / 3, -1 / 3, 0]]
    )
    np.testing.assert_allclose(plain["mean"].deltas[0], [0.5, 1.0, -0.25, 0.25])  # A included
    # shown its own cells, nearest is the answer itself; left out, the closest other one
    np.testing.assert_allclose(plain["nearest"].deltas[1], [0, 2, 0, 0])
    np.testing.assert_allclose(loo["nearest"].deltas[1], [1, 2, 0, 1])  # B -> A+B
    # A+B's singles stay trained; A's cells in Y stay for context_transfer
    assert loo["additive"].perturbations.tolist() == ["A+B"]
    np.testing.assert_allclose(loo["additive"].deltas, [[1, 2, 0, 0]])
    assert loo["context_transfer"].perturbations.tolist() == ["A"]
    np.testing.assert_allclose(loo["context_transfer"].deltas, [[0, 0, 2, 0]])
    assert loo["context_transfer"].not_applicable == ("B", "A+B")
    assert all(d.params["leave_one_out"] for d in loo.values())


def test_a_context_with_one_trained_perturbation_has_no_leave_one_out_mean(train):
    got = leave_one_out_baselines(train, ["A"], methods=("mean", "control"), context="Y")
    assert got["mean"].not_applicable == ("A",) and len(got["mean"].perturbations) == 0
    assert got["mean"].deltas.shape == (0, 4)
    np.testing.assert_allclose(got["control"].deltas, [[0, 0, 0, 0]])
    assert leave_one_out_reference(train, ["A"], context="Y") is None


def test_the_reference_leaves_each_perturbation_out(train):
    ref = leave_one_out_reference(train, ["A", "B"], context="X")
    assert ref.index.tolist() == ["A", "B"] and ref.columns.tolist() == ["g0", "g1", "g2", "g3"]
    np.testing.assert_allclose(ref.to_numpy(), [LOO_MEAN["A"], LOO_MEAN["B"]])


def test_compare_methods_scores_trained_perturbations_leave_one_out(train):
    real = train[train.obs["cell_context"] == "X"].copy()
    kwargs = dict(context="X", baselines=("mean", "nearest"), split_half_ceiling=False, de=False)
    loo = compare_methods(real, train=train, leave_one_out=True, **kwargs)
    plain = compare_methods(real, train=train, **kwargs)
    table = loo["nearest"].per_perturbation.set_index("perturbation")
    shown = plain["nearest"].per_perturbation.set_index("perturbation")
    assert shown.loc["B", "pearson_delta"] == pytest.approx(1.0)
    assert table.loc["B", "pearson_delta"] == pytest.approx(
        np.corrcoef([1, 2, 0, 1], [0, 2, 0, 0])[0, 1]
    )
    mean = loo["mean"]
    rows = mean.per_perturbation["perturbation"].tolist()
    np.testing.assert_allclose(mean.pred_delta[rows.index("A")], LOO_MEAN["A"], atol=1e-6)
    # pearson_specific against B's own reference: (A+B - ref_B) vs (B - ref_B)
    ref_b = np.asarray(LOO_MEAN["B"])
    expected = np.corrcoef(np.array([1, 2, 0, 1]) - ref_b, np.array([0, 2, 0, 0]) - ref_b)[0, 1]
    assert table.loc["B", "pearson_specific"] == pytest.approx(expected, abs=1e-6)
