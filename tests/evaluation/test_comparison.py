import numpy as np
import pandas as pd
import pytest

from cellrlhf.evaluation.comparison import SPLIT_HALF, compare_methods

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


@pytest.fixture
def contexts(perturbation_adata):
    import anndata as ad

    def part(context, perts, seed):
        a = perturbation_adata(seed=seed, perturbations=perts, prefix=context)
        a.obs["cell_context"] = context
        return a

    train = ad.concat(
        [
            part("X", ("control", "KLF1", "CEBPA", "MAPK1"), 1),
            part("Y", ("control", "KLF1", "G1"), 2),
            part("Z", ("control", "CEBPA", "MAPK1"), 3),
        ]
    )
    real = part("Z", ("control", "KLF1", "KLF1+CEBPA", "SET"), 4)
    return train, real


def test_baselines_that_do_not_apply_say_so(contexts):
    from cellrlhf.evaluation.baselines import (
        control_baseline,
        prediction_adata,
        training_mean_delta,
    )
    from cellrlhf.evaluation.eval_report import markdown_summary, summary_table
    from cellrlhf.evaluation.scoring import evaluate_predictions

    train, real = contexts
    evals = compare_methods(real, predictions={"model": real}, train=train, context="Z", de=False)
    na = {name: sorted(ev.not_applicable["perturbation"]) for name, ev in evals.items()}
    predicted = {name: sorted(ev.per_perturbation["perturbation"]) for name, ev in evals.items()}
    # KLF1 is trained in X and Y but not in Z; SET nowhere
    assert predicted["context_transfer"] == ["KLF1"]
    assert na["context_transfer"] == ["KLF1+CEBPA", "SET"]
    # Z's singles are CEBPA and MAPK1: ridge and nearest apply to KLF1+CEBPA only
    assert predicted["ridge"] == predicted["nearest"] == ["KLF1+CEBPA"]
    assert na["ridge"] == na["nearest"] == ["KLF1", "SET"]
    # additive needs both singles trained in Z: none
    assert predicted["additive"] == [] and na["additive"] == ["KLF1", "KLF1+CEBPA", "SET"]
    assert na["mean"] == na["control"] == na["model"] == []
    # the specific reference is Z's own mean training change: the mean baseline scores 0
    assert (evals["mean"].per_perturbation["pearson_specific"] == 0.0).all()
    in_z = train[(train.obs["cell_context"] == "Z").to_numpy()]
    pred = prediction_adata(control_baseline(in_z, ["KLF1", "KLF1+CEBPA", "SET"]), real)
    own = evaluate_predictions(pred, real, de=False, reference_delta=training_mean_delta(in_z))
    np.testing.assert_allclose(
        evals["control"].per_perturbation["pearson_specific"],
        own.per_perturbation["pearson_specific"],
    )
    s = summary_table(evals, spearman_brown_from=SPLIT_HALF).set_index(["method", "kind"])
    assert s.loc[("additive", "all"), "n_perturbations"] == 0
    assert s.loc[("additive", "all"), "n_not_applicable"] == 3
    assert s.loc[("ridge", "single"), "n_perturbations"] == 0
    assert s.loc[("ridge", "combo"), "n_not_applicable"] == 0
    assert s.loc[("context_transfer", "single"), "n_not_applicable"] == 1
    assert np.isnan(s.loc[("additive", "all"), "pearson_delta"])
    text = markdown_summary(s.reset_index())
    assert "| additive | 0 | n/a: applies to none of the held-out perturbations |" in text
    assert "| ridge (applies to 1 of 3) | 1 |" in text
    assert "| context_transfer (applies to 1 of 3) | 1 |" in text
    # rows keep the evaluation order: context_transfer before the ceilings
    methods = list(dict.fromkeys(s.reset_index()["method"]))
    assert methods.index("context_transfer") < methods.index(SPLIT_HALF)


def test_context_transfer_without_contexts_applies_to_nothing(data):
    train, real = data
    evals = compare_methods(real, train=train, baselines=("context_transfer",), de=False)
    assert len(evals["context_transfer"].per_perturbation) == 0
    assert sorted(evals["context_transfer"].not_applicable["perturbation"]) == [
        "G1+MAPK1",
        "KLF1+CEBPA",
    ]
    with pytest.raises(KeyError, match="pass context_col"):
        compare_methods(real, train=train, context="Z", de=False)


def test_split_half_specific_ceiling_uses_one_reference_for_both_halves():
    # every perturbed cell is the same profile, so the two halves are identical and a ceiling
    # must say 1.0; controls are noisy. Subtracting each half's own control half inside the
    # reference would put (c_B - c_A) / 2 into the two sides with opposite signs (real data:
    # McFaline unseen pairs gave a split-half pearson_specific of -0.19).
    import anndata as ad

    rng = np.random.default_rng(0)
    n_genes = 8
    base = np.linspace(1.0, 2.0, n_genes)

    def cells(label, profile, n, noise):
        X = np.maximum(profile + noise * rng.normal(size=(n, n_genes)), 0.0)
        return ad.AnnData(
            X=X.astype(np.float32),
            obs=pd.DataFrame(
                {"perturbation": [label] * n}, index=[f"{label}_{i}" for i in range(n)]
            ),
            var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]),
        )

    control = cells("control", base, 40, 0.5)
    train = ad.concat(
        [control, *(cells(p, base + shift, 30, 0.1) for p, shift in (("A", 0.3), ("B", -0.2)))]
    )
    specific = np.array([0.5, -0.5, 0.2, 0.0, 0.0, 0.4, -0.3, 0.1])
    test = ad.concat([control, cells("X", base + 0.05 + specific, 20, 0.0)])
    results = compare_methods(test, train=train, baselines=("mean",), seed=1, de=False)
    half = results["split_half"].per_perturbation.set_index("perturbation")
    assert half.loc["X", "pearson_specific"] == pytest.approx(1.0)
    # the mean baseline still scores exactly 0 on it
    assert results["mean"].per_perturbation["pearson_specific"].iloc[0] == 0.0


def test_context_trained_only_on_controls_leaves_within_context_baselines_not_applicable(
    perturbation_adata,
):
    """One drug, held out in one context (unseen_pair with a single perturbation: Zhao 2021):
    the context's training cells are controls only, so no within-context baseline and no
    perturbation-specific reference exist there; `control` and `context_transfer` still apply."""
    import anndata as ad

    def part(context, perts, seed):
        a = perturbation_adata(seed=seed, perturbations=perts, prefix=context)
        a.obs["cell_context"] = context
        return a

    train = ad.concat(
        [part("X", ("control", "DRUG"), 1), part("Y", ("control", "DRUG"), 2)]
        + [part("Z", ("control",), 3)]
    )
    real = part("Z", ("control", "DRUG"), 4)
    evals = compare_methods(real, predictions={"model": real}, train=train, context="Z", de=False)
    predicted = {name: sorted(ev.per_perturbation["perturbation"]) for name, ev in evals.items()}
    na = {name: sorted(ev.not_applicable["perturbation"]) for name, ev in evals.items()}
    for name in ("mean", "additive", "ridge", "nearest"):
        assert predicted[name] == [] and na[name] == ["DRUG"], name
    assert predicted["control"] == predicted["context_transfer"] == predicted["model"] == ["DRUG"]
    np.testing.assert_allclose(evals["model"].per_perturbation["pearson_delta"], 1.0)
    # no training perturbation in Z: the specific reference is undefined, so the metric is NaN
    for name in ("model", "control", "context_transfer", SPLIT_HALF):
        assert evals[name].per_perturbation["pearson_specific"].isna().all(), name
