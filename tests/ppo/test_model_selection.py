import math

from hypothesis import given, settings
from hypothesis import strategies as st

from cellrlhf.ppo.model_selection import (
    DISTINCT_KEY,
    ENTROPY_KEY,
    FIDELITY_KEY,
    BestPolicySelector,
)


def metrics(fidelity, distinct=1.0, entropy=3.0):
    return {FIDELITY_KEY: fidelity, DISTINCT_KEY: distinct, ENTROPY_KEY: entropy}


def test_first_evaluation_is_the_baseline_and_the_first_best():
    selector = BestPolicySelector()
    decision = selector.update(0, metrics(0.2))
    assert decision.improved and decision.eligible and not decision.should_stop
    assert selector.best_step == 0
    assert selector.baseline == metrics(0.2)


def test_collapsed_policy_with_higher_fidelity_is_never_kept():
    selector = BestPolicySelector(min_distinct_ratio=0.9, min_entropy_ratio=0.9)
    selector.update(0, metrics(0.2, distinct=1.0, entropy=3.0))
    collapsed = selector.update(10, metrics(0.9, distinct=0.1, entropy=3.0))
    assert not collapsed.eligible and not collapsed.improved
    assert "distinct_fraction 0.100 < 0.9 x baseline 1.000" in collapsed.reason
    low_entropy = selector.update(20, metrics(0.95, distinct=1.0, entropy=1.0))
    assert not low_entropy.eligible
    assert "token_entropy" in low_entropy.reason
    assert selector.best_step == 0
    honest = selector.update(30, metrics(0.3, distinct=0.95, entropy=2.8))
    assert honest.improved and selector.best_step == 30


def test_patience_counts_evaluations_without_improvement_and_stops():
    selector = BestPolicySelector(patience=2, min_delta=0.05)
    selector.update(0, metrics(0.2))
    assert not selector.update(1, metrics(0.24)).should_stop  # +0.04 is below min_delta
    stop = selector.update(2, metrics(0.21))
    assert stop.should_stop and not stop.improved
    assert "2 evaluations without improvement" in stop.reason
    assert selector.best_step == 0


def test_undefined_fidelity_is_not_eligible():
    selector = BestPolicySelector()
    selector.update(0, metrics(0.1))
    decision = selector.update(5, metrics(math.nan))
    assert not decision.eligible and "undefined" in decision.reason


def test_state_is_json_ready():
    selector = BestPolicySelector()
    selector.update(0, metrics(0.1))
    state = selector.to_dict()
    assert state["best_step"] == 0 and state["best_fidelity"] == 0.1
    assert state["decisions"][0]["reason"] == "best so far"


evaluations = st.lists(
    st.tuples(
        st.floats(-1, 1, allow_nan=False),
        st.floats(0, 1, allow_nan=False),
        st.floats(0, 5, allow_nan=False),
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(evaluations)
def test_best_is_the_max_fidelity_among_eligible_evaluations(evals):
    selector = BestPolicySelector(min_distinct_ratio=0.8, min_entropy_ratio=0.8, patience=None)
    for step, (fid, distinct, entropy) in enumerate(evals):
        selector.update(step, metrics(fid, distinct, entropy))
    base = evals[0]
    eligible = [
        (fid, step)
        for step, (fid, distinct, entropy) in enumerate(evals)
        if distinct >= 0.8 * base[1] and entropy >= 0.8 * base[2]
    ]
    best_fid = max(f for f, _ in eligible)
    first_best_step = min(s for f, s in eligible if f == best_fid)
    assert selector.best_fidelity == best_fid
    assert selector.best_step == first_best_step


def test_selection_on_another_metric_reads_that_key():
    from cellrlhf.ppo.model_selection import SPECIFIC_KEY

    selector = BestPolicySelector(fidelity_key=SPECIFIC_KEY)
    selector.update(0, {**metrics(0.5), SPECIFIC_KEY: 0.1})
    # pearson_delta falls, the specific fidelity rises: the specific one decides
    decision = selector.update(10, {**metrics(0.3), SPECIFIC_KEY: 0.2})
    assert decision.improved and selector.best_step == 10 and decision.fidelity == 0.2
    assert selector.to_dict()["metric"] == SPECIFIC_KEY


def test_resolve_selection_metric():
    from cellrlhf.ppo.model_selection import SPECIFIC_KEY, resolve_selection_metric

    assert resolve_selection_metric("auto", specific_weight=1.0, has_reference=True) == SPECIFIC_KEY
    assert resolve_selection_metric("auto", specific_weight=0.0, has_reference=True) == FIDELITY_KEY
    assert (
        resolve_selection_metric("auto", specific_weight=1.0, has_reference=False) == FIDELITY_KEY
    )
    assert (
        resolve_selection_metric("pearson_specific", specific_weight=0.0, has_reference=True)
        == SPECIFIC_KEY
    )
    assert (
        resolve_selection_metric("pearson_delta", specific_weight=1.0, has_reference=True)
        == FIDELITY_KEY
    )
    import pytest

    with pytest.raises(ValueError, match="pearson_delta"):
        resolve_selection_metric("pearson_specific", specific_weight=1.0, has_reference=False)
    with pytest.raises(ValueError, match="choose one of"):
        resolve_selection_metric("spearman", specific_weight=0.0, has_reference=True)
