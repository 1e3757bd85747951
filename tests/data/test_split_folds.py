"""Folds of held-out units: every unit test exactly once, disjoint, seeded, no leakage."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cellrlhf.data.schema import CONTROL_LABEL
from cellrlhf.data.split_folds import fold_partition
from cellrlhf.data.splits import SplitConfig, SplitError, make_splits


def _obs(groups: dict[tuple[str, str], int]) -> pd.DataFrame:
    rows = [(p, c) for (p, c), n in groups.items() for _ in range(n)]
    obs = pd.DataFrame(rows, columns=["perturbation", "cell_context"])
    obs.index = [f"cell{i}" for i in range(len(obs))]
    return obs


def _cells(obs, split, assignment):
    keys = obs["perturbation"] + "@" + obs["cell_context"]
    return set(keys.to_numpy()[assignment.labels == split])


def _test_units(assignment) -> list[str]:
    if assignment.kind == "unseen_pair":
        return sorted(f"{p}@{c}" for p, c in assignment.test_pairs)
    return assignment.test_perturbations


def test_fold_partition_by_hand():
    units = [f"u{i}" for i in range(7)]
    folds = fold_partition(units, 3, seed=0)
    assert sorted(len(f) for f in folds) == [2, 2, 3]
    assert sorted(u for f in folds for u in f) == units
    assert folds == fold_partition(list(reversed(units)), 3, seed=0)  # order-free, seeded
    assert any(fold_partition(units, 3, seed=s) != folds for s in range(1, 6))
    # grouped: a group of 3 over 3 folds has one unit in each
    grouped = fold_partition(
        [f"{g}@{c}" for g in "PQR" for c in "xyz"], 3, seed=1, group_of=lambda u: u[0]
    )
    for fold in grouped:
        assert sorted(u[0] for u in fold) == ["P", "Q", "R"]
    with pytest.raises(SplitError, match=r"split.folds=8 but only 7 units"):
        fold_partition(units, 8, seed=0)


SCREEN = _obs(
    {
        **{(CONTROL_LABEL, c): 20 for c in ("K1", "K2")},
        **{(p, c): 8 for p in "ABCDEF" for c in ("K1", "K2")},
        **{(combo, "K1"): 8 for combo in ("A+B", "C+D", "E+F", "A+C", "A+Z")},
    }
)


@pytest.mark.parametrize(
    ("kind", "folds", "units", "extra"),
    [
        ("unseen_single", 3, list("ABCDEF"), {}),
        ("unseen_combo", 2, ["A+B", "A+C", "C+D", "E+F"], {}),  # A+Z: Z is not measured
        # every combination, the one with an unmeasured single too
        ("unseen_combo", 2, ["A+B", "A+C", "A+Z", "C+D", "E+F"], {"combo_pool": "all"}),
        ("unseen_pair", 4, [f"{p}@{c}" for p in "ABCDEF" for c in ("K1", "K2")], {}),
    ],
)
def test_every_unit_is_test_in_exactly_one_fold(kind, folds, units, extra):
    n_validation = {
        "n_validation_pairs" if kind == "unseen_pair" else "n_validation_perturbations": 1
    }
    seen = []
    for fold in range(folds):
        spec = {"kind": kind, "folds": folds, "fold": fold, "seed": 3, **n_validation, **extra}
        a = make_splits(SCREEN, SplitConfig.from_dict(spec))
        assert a.fold == fold and a.folds == folds and len(a.fold_units) == folds
        assert _test_units(a) == a.fold_units[fold]
        validation = a.validation_pairs if kind == "unseen_pair" else a.validation_perturbations
        assert len(validation) == 1 and not set(map(str, validation)) & set(_test_units(a))
        payload = a.to_dict(SCREEN.index)
        assert payload["fold"] == fold and payload["folds"] == folds
        assert payload["fold_units"] == a.fold_units
        seen += _test_units(a)
    assert sorted(seen) == sorted(units)


def test_folds_config_rules():
    config = SplitConfig.from_dict({"kind": "unseen_single", "folds": 3})
    assert config.fold == 0  # the default fold
    bad = [
        ({"kind": "unseen_single", "folds": 3, "test_perturbations": ["A"]}, "cannot be combined"),
        ({"kind": "unseen_pair", "folds": 3, "test_pairs": ["A@K1"]}, "cannot be combined"),
        (
            {"kind": "unseen_combo", "folds": 2, "validation_perturbations": ["A+B"]},
            "n_validation_perturbations / n_validation_pairs",
        ),
        ({"kind": "unseen_single", "folds": 3, "fold": 3}, "out of range"),
        ({"kind": "unseen_single", "fold": 1}, "needs split.folds"),
        ({"kind": "unseen_context", "folds": 2}, "split.folds is for kinds"),
        ({"kind": "unseen_single", "folds": 1}, ">= 2"),
        ({"kind": "unseen_combo", "combo_pool": "some"}, "choose one of"),
        ({"kind": "unseen_single", "combo_pool": "all"}, "for kind 'unseen_combo'"),
    ]
    for spec, fragment in bad:
        with pytest.raises(SplitError, match=fragment):
            SplitConfig.from_dict(spec)
    with pytest.raises(SplitError, match="only 4 eligible combinations"):
        make_splits(SCREEN, SplitConfig(kind="unseen_combo", folds=5))


def test_validation_is_drawn_from_each_folds_training_part():
    draws = set()
    for fold in range(3):
        config = SplitConfig(kind="unseen_single", folds=3, fold=fold, n_validation_perturbations=2)
        a = make_splits(SCREEN, config)
        assert a.validation_perturbations == make_splits(SCREEN, config).validation_perturbations
        assert not set(a.validation_targets) & set(a.test_targets)
        draws.add(tuple(a.validation_perturbations))
    assert len(draws) > 1  # not the same validation singles in every fold


@st.composite
def designs(draw):
    """Random screens: singles in random subsets of contexts, combinations (most of them with
    both singles measured where they are), a kind and K."""
    kind = draw(st.sampled_from(["unseen_single", "unseen_combo", "unseen_pair"]))
    contexts = [f"L{i}" for i in range(draw(st.integers(1 if kind != "unseen_pair" else 2, 3)))]
    singles = [f"G{i}" for i in range(draw(st.integers(3, 7)))]
    groups = {(CONTROL_LABEL, c): 6 for c in contexts}
    where = {}
    for s in singles:
        where[s] = sorted(draw(st.sets(st.sampled_from(contexts), min_size=1)))
        groups.update({(s, c): 3 for c in where[s]})
    n_combos = draw(st.integers(2 if kind == "unseen_combo" else 0, 6))
    for _ in range(n_combos):
        a, b = sorted(draw(st.lists(st.sampled_from(singles), min_size=2, max_size=2, unique=True)))
        shared = sorted(set(where[a]) & set(where[b])) or where[a]
        for c in draw(st.sets(st.sampled_from(shared), min_size=1)):
            groups[(f"{a}+{b}", c)] = 3
    return _obs(groups), kind, draw(st.integers(2, 4)), draw(st.integers(0, 3))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(designs())
def test_fold_property_over_random_designs(design):
    obs, kind, folds, seed = design
    try:
        first = make_splits(obs, SplitConfig(kind=kind, folds=folds, seed=seed))
    except SplitError as err:  # too few eligible units for K folds: said plainly
        event(f"{kind}: no folds")
        assert "eligible" in str(err) or "needs" in str(err) or "every" in str(err)
        return
    event(f"{kind}: folds")
    units = [u for fold in first.fold_units for u in fold]
    assert len(units) == len(set(units))  # disjoint
    sizes = [len(f) for f in first.fold_units]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    seen = []
    n_validation = {
        "n_validation_pairs" if kind == "unseen_pair" else "n_validation_perturbations": 1
    }
    for fold in range(folds):
        spec = {"kind": kind, "folds": folds, "fold": fold, "seed": seed}
        a = make_splits(obs, SplitConfig.from_dict(spec))
        assert a.fold_units == first.fold_units  # the partition does not depend on the fold
        again = make_splits(obs, SplitConfig.from_dict(spec))
        np.testing.assert_array_equal(a.labels, again.labels)
        seen += _test_units(a)
        _check_fold(obs, a)
        try:
            v = make_splits(obs, SplitConfig.from_dict({**spec, **n_validation}))
        except SplitError:
            continue  # no training unit left to validate on
        event(f"{kind}: validation checked")
        _check_fold(obs, v)
        test = set(_test_units(v))
        held = {f"{p}@{c}" for p, c in v.validation_pairs} | set(v.validation_perturbations)
        assert held and not held & test
    assert sorted(seen) == sorted(units)


def _check_fold(obs, a) -> None:
    """No test or validation unit's cells in training; pairs keep a training context."""
    train = _cells(obs, "train", a)
    perts = obs["perturbation"].to_numpy()
    contexts = obs["cell_context"].to_numpy()
    if a.kind == "unseen_pair":
        for p, c in a.test_pairs + a.validation_pairs:
            assert f"{p}@{c}" not in train
            assert any(k.split("@")[0] == p for k in train), f"{p} has no training context"
        assert not any(a.is_held_out(*k.split("@")) for k in train)
    elif a.kind == "unseen_single":
        held = {t for t in a.test_targets + a.validation_targets}
        assert not any(set(k.split("@")[0].split("+")) & held for k in train)
    else:
        for p in a.test_perturbations + a.validation_perturbations:
            assert f"{p}@{contexts[perts == p][0]}" not in train
            for single in p.split("+"):  # singles of a test combination stay trained
                assert (perts[a.labels == "train"] == single).any()
