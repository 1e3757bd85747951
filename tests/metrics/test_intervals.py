import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellrlhf.metrics.intervals import (
    SMALL_SAMPLE,
    bootstrap_mean,
    cluster_means,
    paired_difference,
    percentile_interval,
    perturbations_needed,
)


def _paired_table(diffs_by_seed, base=0.2):
    """Rows of ``grpo`` and ``sft`` per (seed, perturbation) with grpo - sft = the given diff."""
    rows = []
    for seed, diffs in enumerate(diffs_by_seed):
        for i, d in enumerate(diffs):
            for method, v in (("sft", base + 0.01 * i), ("grpo", base + 0.01 * i + d)):
                rows.append(
                    {"method": method, "run": f"seed{seed}", "cell_context": "K562",
                     "perturbation": f"P{i}", "value": v}
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_constant_differences_give_a_zero_width_interval_at_the_constant():
    table = _paired_table([[0.06] * 7, [0.06] * 7])
    iv = paired_difference(table, "grpo", "sft", value="value")
    assert iv.estimate == pytest.approx(0.06)
    assert iv.low == pytest.approx(0.06) and iv.high == pytest.approx(0.06)
    assert (iv.n_clusters, iv.n_dropped) == (7, 0)


def test_large_normal_sample_matches_mean_plus_minus_1_96_standard_errors():
    x = np.random.default_rng(3).normal(0.3, 1.0, size=4000)
    iv = bootstrap_mean(x, np.arange(len(x)), n_boot=4000, seed=1)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert iv.estimate == pytest.approx(x.mean())
    assert iv.low == pytest.approx(x.mean() - 1.96 * se, abs=0.15 * se)
    assert iv.high == pytest.approx(x.mean() + 1.96 * se, abs=0.15 * se)


def test_duplicated_seeds_give_the_interval_of_one_copy():
    x = np.random.default_rng(0).normal(size=12)
    one = bootstrap_mean(x, [f"P{i}" for i in range(12)], n_boot=500, seed=4)
    three = bootstrap_mean(np.tile(x, 3), [f"P{i}" for i in range(12)] * 3, n_boot=500, seed=4)
    assert one == three


def test_paired_difference_averages_seeds_per_perturbation_first():
    # seed 0: diffs 0.1, 0.3; seed 1: diffs 0.3, 0.5 -> per perturbation 0.2, 0.4 -> mean 0.3
    table = _paired_table([[0.1, 0.3], [0.3, 0.5]])
    iv = paired_difference(table, "grpo", "sft", value="value", n_boot=200)
    assert iv.estimate == pytest.approx(0.3)
    # two perturbations (0.2, 0.4): Student's t interval of the two cluster means, not of the 4 rows
    half = 12.706204736174707 * 0.1  # t_1(0.975) * sd / sqrt(2), sd = 0.1 * sqrt(2)
    assert (iv.low, iv.high) == pytest.approx((0.3 - half, 0.3 + half))


def test_undefined_values_drop_the_perturbation_and_are_counted():
    table = _paired_table([[0.1, 0.2, 0.3]])
    table.loc[(table["method"] == "sft") & (table["perturbation"] == "P2"), "value"] = np.nan
    iv = paired_difference(table, "grpo", "sft", value="value", n_boot=200)
    assert iv.estimate == pytest.approx(0.15)
    assert (iv.n_clusters, iv.n_dropped) == (2, 1)
    nothing = table.assign(value=np.nan)
    iv = paired_difference(nothing, "grpo", "sft", value="value")
    assert not iv.defined and np.isnan(iv.estimate) and iv.n_dropped == 3


def test_one_perturbation_has_an_estimate_but_no_interval():
    assert np.isnan(percentile_interval([0.4])[1])
    iv = bootstrap_mean([0.4, 0.6], ["A", "A"])
    assert iv.estimate == pytest.approx(0.5) and np.isnan(iv.low) and iv.n_clusters == 1


def test_same_seed_same_interval_and_bad_input_is_refused():
    x = np.random.default_rng(1).normal(size=30)
    assert percentile_interval(x, seed=2) == percentile_interval(x, seed=2)
    with pytest.raises(ValueError, match="finite"):
        percentile_interval([0.1, np.nan])
    table = pd.concat([_paired_table([[0.1]]), _paired_table([[0.2]])])
    with pytest.raises(ValueError, match="several rows"):
        paired_difference(table, "grpo", "sft", value="value")


def test_cluster_means_leave_out_clusters_without_defined_values():
    means, dropped = cluster_means([1.0, 3.0, np.nan, np.nan], ["a", "a", "b", "b"])
    assert means.to_dict() == {"a": 2.0} and dropped == 1


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=2, max_size=30))
def test_interval_is_ordered_and_lies_within_the_data(values):
    mean, low, high = percentile_interval(values, n_boot=200, seed=0)
    tol = 1e-9
    assert mean == pytest.approx(np.mean(values))
    assert low <= mean + tol and mean <= high + tol
    if len(values) >= SMALL_SAMPLE:  # the bootstrap only recombines the data
        assert min(values) - tol <= low <= high + tol <= max(values) + 2 * tol
    elif np.ptp(values) > 0:  # few perturbations: Student's t interval
        from scipy.stats import sem, t

        if not sem(values) > 0:  # spread below float resolution: the point interval
            assert low == high == mean
            return
        expected = t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sem(values))
        assert (low, high) == pytest.approx(expected)


def test_few_perturbations_get_the_wider_t_interval_by_hand():
    mean, low, high = percentile_interval([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, se = sd / 2 = 0.6455, t_3(0.975) = 3.1824
    assert mean == 2.5 and (low, high) == pytest.approx((0.4457, 4.5543), abs=1e-4)
    # ten perturbations and more: the percentile bootstrap, inside the data
    values = np.linspace(0.0, 1.0, SMALL_SAMPLE)
    _, low, high = percentile_interval(values, n_boot=500)
    assert 0.0 <= low < 0.5 < high <= 1.0


def test_spread_is_the_sd_of_the_perturbation_means_not_of_the_rows():
    # two seeds per perturbation that disagree by +-0.02 around means 0.1, 0.2, 0.3: the seeds
    # average out inside each perturbation, the spread is that of [0.1, 0.2, 0.3] = 0.1
    table = _paired_table([[0.08, 0.18, 0.28], [0.12, 0.22, 0.32]])
    iv = paired_difference(table, "grpo", "sft", value="value")
    assert iv.spread == pytest.approx(0.1)
    assert np.isnan(bootstrap_mean([0.3], ["P0"]).spread)


def test_perturbations_needed_on_hand_computed_cases():
    # t_4 * 0.04 / sqrt(5) = 0.0497 > 0.043 > t_5 * 0.04 / sqrt(6) = 0.0420
    assert perturbations_needed(0.043, 0.040) == 6
    assert perturbations_needed(-0.043, 0.040) == 6  # the size matters, not the sign
    # beyond SMALL_SAMPLE: (1.96 * 0.04 / 0.01)^2 = 61.5 -> 62
    assert perturbations_needed(0.01, 0.04) == 62
    assert perturbations_needed(0.0, 0.04) is None
    assert perturbations_needed(float("nan"), 0.04) is None
    assert perturbations_needed(0.1, float("nan")) is None
    assert perturbations_needed(1e-6, 1.0) is None  # more than max_n
    assert perturbations_needed(0.1, 0.0) == 2


@settings(max_examples=50, deadline=None)
@given(st.floats(0.001, 1.0), st.floats(0.001, 1.0), st.sampled_from([0.9, 0.95, 0.99]))
def test_perturbations_needed_is_the_first_n_whose_interval_clears_zero(diff, spread, level):
    from scipy.stats import norm, t

    n = perturbations_needed(diff, spread, confidence_level=level, max_n=10**9)

    def half_width(k):
        q = t.ppf(0.5 + level / 2, k - 1) if k < SMALL_SAMPLE else norm.ppf(0.5 + level / 2)
        return q * spread / np.sqrt(k)

    assert half_width(n) < diff
    assert n == 2 or half_width(n - 1) >= diff
