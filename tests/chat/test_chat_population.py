"""Predictions from a context's control cells, the measured response beside them, and the
warnings the web app shows (low vocabulary overlap, invalid predictions)."""

from __future__ import annotations

import numpy as np
import pytest
from cell_screens import CONTEXTS, MEASURED, low_vocabulary_cells, perturbed_screen

from cellrlhf.sampling import Completion


def test_roles_of_a_screen_and_of_plain_cells(lm, pbmc):
    from cellrlhf.chat.population import data_roles

    screen = perturbed_screen(pbmc)
    roles = data_roles(screen, lm)
    assert (roles.perturbation, roles.controls, roles.context) == (
        "perturbation",
        ("control",),
        "cell_type",
    )
    assert (roles.n_known, roles.n_genes, roles.transform) == (765, 765, "none")
    mask = roles.is_control(screen.obs)
    assert mask.sum() == (screen.obs["perturbation"] == "control").sum()
    assert roles.targets_of("b+a") == frozenset({"A", "B"})
    plain = data_roles(pbmc, lm)
    assert plain.perturbation is None and plain.is_control(pbmc.obs).all()


def test_low_vocabulary_overlap_is_a_warning(lm, pbmc):
    from cellrlhf.chat.population import data_roles, overlap_warning

    roles = data_roles(low_vocabulary_cells(pbmc, keep=20), lm)
    assert (roles.n_known, roles.n_genes) == (20, 765)
    assert "only 20 of the data's 765 genes (3%)" in overlap_warning(roles)
    assert overlap_warning(data_roles(pbmc, lm)) is None


def test_prediction_starts_from_the_contexts_controls_and_is_evaluated(lm, pbmc):
    from cellrlhf.chat.population import data_roles, predict_from_controls

    screen = perturbed_screen(pbmc)
    roles = data_roles(screen, lm)
    result = predict_from_controls(lm, screen, roles, MEASURED, context=CONTEXTS[0], n_cells=5)
    inputs = result.prediction.adata.obs["input_cell"]
    obs = screen.obs.loc[inputs]
    assert len(set(inputs)) == 5 == result.n_controls
    assert (obs["perturbation"] == "control").all() and (obs["cell_type"] == CONTEXTS[0]).all()
    measured = (screen.obs["perturbation"] == MEASURED) & (screen.obs["cell_type"] == CONTEXTS[0])
    assert result.n_measured == int(measured.sum()) > 0
    assert result.evaluation is not None and not result.invalid
    # the measured change is the screen's: SPI1 raised in the treated cells
    table = result.deltas().set_index("gene")
    real = screen[measured].X.toarray().mean(0) - screen[
        (screen.obs["perturbation"] == "control") & (screen.obs["cell_type"] == CONTEXTS[0])
    ].X.toarray().mean(0)
    col = list(screen.var_names).index(MEASURED)
    assert table.loc[MEASURED, "measured"] == pytest.approx(real[col], rel=1e-5)
    metrics = result.metrics()
    assert set(metrics) == {"pearson_delta", "pearson_delta_top20", "mae_delta"}  # 1 candidate
    row = result.evaluation.per_perturbation.iloc[0]
    assert metrics["pearson_delta"] == row["pearson_delta"] and np.isfinite(row["pearson_delta"])
    assert (row["n_pred"], row["n_real"]) == (result.n_valid, result.n_measured)


def test_other_context_without_measured_cells(lm, pbmc):
    from cellrlhf.chat.population import choose_context, data_roles, predict_from_controls

    screen = perturbed_screen(pbmc)
    roles = data_roles(screen, lm)
    result = predict_from_controls(lm, screen, roles, "NKG7", context=CONTEXTS[1], n_cells=3)
    assert result.n_measured == 0 and result.evaluation is None
    assert "measured" not in result.deltas()
    row = int(np.flatnonzero(screen.obs["cell_type"] == CONTEXTS[1])[0])
    assert choose_context(screen, roles, None, row) == CONTEXTS[1]
    with pytest.raises(ValueError, match="choose a cell context"):
        choose_context(screen, roles, None, None)
    with pytest.raises(ValueError, match="not in the data"):
        choose_context(screen, roles, "Neuron", None)


@pytest.fixture
def empty_answers(lm, monkeypatch):
    """The model answers without a single gene (an invalid prediction)."""

    def generate(conversations, settings, **kwargs):
        return [Completion("No changes </pert>", 0.0, 3, True) for _ in conversations]

    monkeypatch.setattr(lm.generator, "generate", generate)


def test_an_invalid_prediction_is_reported_not_plotted(lm, pbmc, empty_answers):
    from cellrlhf.chat.population import data_roles, predict_from_controls
    from cellrlhf.chat.web_views import prediction_summary

    screen = perturbed_screen(pbmc)
    roles = data_roles(screen, lm)
    result = predict_from_controls(lm, screen, roles, MEASURED, context=CONTEXTS[0], n_cells=4)
    assert result.invalid and result.evaluation is None
    assert result.prediction.valid_fraction == 0.0
    text = prediction_summary(result)
    assert text.startswith("**Invalid prediction: SPI1 in CD14+ Monocyte.**")
    assert "valid gene fraction 0.00" in text
