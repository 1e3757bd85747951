from itertools import combinations

from hypothesis import given, settings
from hypothesis import strategies as st

from cellrlhf.pipeline.stage_graph import ancestors, parallel_width, threads_per_stage


@st.composite
def dags(draw):
    """Stages s0..sN-1, each needing a random subset of the earlier ones."""
    n = draw(st.integers(1, 7))
    return {f"s{i}": tuple(f"s{j}" for j in range(i) if draw(st.booleans())) for i in range(n)}


def _brute_force_width(names, before):
    for size in range(len(names), 0, -1):
        for group in combinations(names, size):
            if all(a not in before[b] and b not in before[a] for a, b in combinations(group, 2)):
                return size
    return 0


@settings(max_examples=150, deadline=None)
@given(dags())
def test_width_is_the_largest_set_of_mutually_independent_stages(needs):
    before = ancestors(needs)
    assert parallel_width(list(needs), before) == _brute_force_width(list(needs), before)


def test_ancestors_follow_needs_transitively():
    before = ancestors({"a": (), "b": ("a",), "c": ("b",), "d": ()})
    assert before == {
        "a": frozenset(),
        "b": {"a"},
        "c": {"a", "b"},
        "d": frozenset(),
    }


def test_threads_are_capped_by_max_parallel_and_by_what_can_overlap():
    three_lanes = {"root": (), "x": ("root",), "y": ("root",), "z": ("root",)}
    assert threads_per_stage(three_lanes, cpu_count=8, max_parallel=2) == {
        "root": 8,
        "x": 4,
        "y": 4,
        "z": 4,
    }
    assert threads_per_stage(three_lanes, cpu_count=8, max_parallel=8)["x"] == 2
    assert threads_per_stage(three_lanes, cpu_count=2, max_parallel=8)["x"] == 1
    assert threads_per_stage(three_lanes, cpu_count=8, max_parallel=1)["x"] == 8
