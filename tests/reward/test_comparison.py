import numpy as np
import pytest

from cellrlhf.reward.comparison import SPLIT_HALF, compare_methods

SINGLES = ("control", "G1", "KLF1", "MAPK1", "CEBPA")


@pytest.fixture
def data(perturbation_adata):
    train = perturbation_adata(seed=3, perturbations=SINGLES)
    real = perturbation_adata(seed=1, perturbations=("control", "KLF1+CEBPA", "G1+MAPK1"))
    return train, real


def test_every_method_gets_the_specific_metrics_of_one_reference(data):
    train, real = data
    evals = compare_methods(
        real, predictions={"model": real}, train=train, baselines=("mean", "additive"), de=False
    )
    assert set(evals) == {"model", "mean", "additive", SPLIT_HALF}
    for name, ev in evals.items():
        assert ev.params["specific_reference"], name
        assert np.isfinite(ev.per_perturbation["pearson_specific"]).all(), name
    assert (evals["mean"].per_perturbation["pearson_specific"] == 0.0).all()
    np.testing.assert_allclose(evals["model"].per_perturbation["pearson_specific"], 1.0)
    no_train = compare_methods(real, predictions={"model": real}, de=False)
    assert no_train["model"].per_perturbation["pearson_specific"].isna().all()
