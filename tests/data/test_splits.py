import numpy as np
import pandas as pd
import pytest

from cellrlhf.data.schema import CONTROL_LABEL
from cellrlhf.data.splits import SplitConfig, SplitError, make_splits


def _obs(groups: dict[tuple[str, str], int]) -> pd.DataFrame:
    rows = [(p, c) for (p, c), n in groups.items() for _ in range(n)]
    obs = pd.DataFrame(rows, columns=["perturbation", "cell_context"])
    obs.index = [f"cell{i}" for i in range(len(obs))]
    return obs


SCREEN = _obs(
    {
        (CONTROL_LABEL, "K562"): 40,
        ("A", "K562"): 20,
        ("B", "K562"): 20,
        ("C", "K562"): 20,
        ("D", "K562"): 20,
        ("A+B", "K562"): 20,
        ("C+D", "K562"): 20,
        ("A+E", "K562"): 20,  # E is never measured alone
        (CONTROL_LABEL, "HEPG2"): 30,
        ("A", "HEPG2"): 20,
        ("B", "HEPG2"): 20,
    }
)


def _perts(obs, assignment, split):
    return set(obs["perturbation"].to_numpy()[assignment.labels == split])


def test_random_cells_stratified_and_deterministic():
    config = SplitConfig(kind="random_cells", test_fraction=0.25, validation_fraction=0.1, seed=4)
    a = make_splits(SCREEN, config)
    b = make_splits(SCREEN, config)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert set(a.labels) == {"train", "validation", "test"}
    for (p, c), group in SCREEN.groupby(["perturbation", "cell_context"]):
        labels = a.labels[SCREEN.index.get_indexer(group.index)]
        assert (labels == "test").sum() == round(0.25 * len(group)), (p, c)
    other = make_splits(SCREEN, SplitConfig(kind="random_cells", test_fraction=0.25, seed=5))
    assert not np.array_equal(a.labels, other.labels)


def test_unseen_single_holds_out_targets_everywhere():
    config = SplitConfig(kind="unseen_single", test_perturbations=("A",), validation_fraction=0.1)
    a = make_splits(SCREEN, config)
    assert a.test_targets == ["A"]
    assert _perts(SCREEN, a, "test") == {"A"}
    assert a.excluded_perturbations == ["A+B", "A+E"]
    for split in ("train", "validation"):
        assert not any("A" in p.split("+") for p in _perts(SCREEN, a, split))
    # controls stay in training
    assert CONTROL_LABEL in _perts(SCREEN, a, "train")
    assert a.is_held_out("A+B", "K562") and not a.is_held_out("B", "K562")


def test_unseen_single_combos_can_go_to_test():
    config = SplitConfig(
        kind="unseen_single", test_perturbations=("A",), combos_with_test_targets="test"
    )
    a = make_splits(SCREEN, config)
    assert _perts(SCREEN, a, "test") == {"A", "A+B", "A+E"}
    assert a.excluded_perturbations == []


def test_unseen_single_drawn_by_fraction():
    a = make_splits(SCREEN, SplitConfig(kind="unseen_single", test_fraction=0.5, seed=1))
    assert len(a.test_perturbations) == 2  # of the 4 singles
    assert all("+" not in p for p in a.test_perturbations)


def test_unseen_combo_only_combos_with_measured_singles():
    a = make_splits(SCREEN, SplitConfig(kind="unseen_combo", test_fraction=0.5, seed=0))
    assert len(a.test_perturbations) == 1
    assert a.test_perturbations[0] in {"A+B", "C+D"}  # A+E is not eligible
    train = _perts(SCREEN, a, "train")
    for target in a.test_perturbations[0].split("+"):
        assert target in train  # its singles are seen
    with pytest.raises(SplitError, match="singles are all measured"):
        make_splits(SCREEN, SplitConfig(kind="unseen_combo", test_perturbations=("A+E",)))


def test_unseen_combo_pool_all_holds_out_a_combination_with_an_unmeasured_single():
    config = SplitConfig(kind="unseen_combo", test_perturbations=("A+E",), combo_pool="all")
    a = make_splits(SCREEN, config)
    assert _perts(SCREEN, a, "test") == {"A+E"}
    assert {"A", "A+B", "C+D"} <= _perts(SCREEN, a, "train")
    drawn = make_splits(
        SCREEN,
        SplitConfig(kind="unseen_combo", test_perturbations=("A+B",), combo_pool="all",
                    n_validation_perturbations=2),
    )
    assert drawn.validation_perturbations == ["A+E", "C+D"]
    singles = _obs({(CONTROL_LABEL, "X"): 5, ("A", "X"): 5})
    with pytest.raises(SplitError, match="has none"):
        make_splits(singles, SplitConfig(kind="unseen_combo", combo_pool="all"))


def test_unseen_context():
    a = make_splits(SCREEN, SplitConfig(kind="unseen_context", validation_fraction=0.0, seed=0))
    assert a.test_contexts in (["HEPG2"], ["K562"])
    test_ctx = set(SCREEN["cell_context"].to_numpy()[a.labels == "test"])
    train_ctx = set(SCREEN["cell_context"].to_numpy()[a.labels == "train"])
    assert test_ctx == set(a.test_contexts) and not test_ctx & train_ctx
    b = make_splits(SCREEN, SplitConfig(kind="unseen_context", test_contexts=("HEPG2",)))
    assert b.is_held_out(CONTROL_LABEL, "HEPG2")


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (SplitConfig(kind="unseen_single", test_perturbations=("Z",)), "not in the data"),
        (SplitConfig(kind="unseen_single", test_perturbations=("A+B",)), "combinations"),
        (
            SplitConfig(kind="unseen_single", test_perturbations=("A", "B", "C", "D")),
            "every single",
        ),
        (SplitConfig(kind="unseen_context", test_contexts=("K562", "HEPG2")), "every context"),
    ],
)
def test_errors(config, fragment):
    with pytest.raises(SplitError, match=fragment):
        make_splits(SCREEN, config)


def test_no_combos_for_unseen_combo():
    singles = _obs({(CONTROL_LABEL, "X"): 5, ("A", "X"): 5, ("B", "X"): 5})
    with pytest.raises(SplitError, match="has none"):
        make_splits(singles, SplitConfig(kind="unseen_combo"))


def test_config_validation():
    with pytest.raises(SplitError, match="split.kind"):
        SplitConfig(kind="leave_one_out")
    with pytest.raises(SplitError, match="unknown key"):
        SplitConfig.from_dict({"kind": "random_cells", "fraction": 0.2})


def test_manifest_lists_every_cell_once():
    a = make_splits(SCREEN, SplitConfig(kind="unseen_single", test_perturbations=("C",)))
    payload = a.to_dict(SCREEN.index, SCREEN)
    listed = [c for cells in payload["cells"].values() for c in cells]
    assert sorted(listed) == sorted(SCREEN.index)
    assert payload["groups"]["test"] == [
        {"perturbation": "C", "cell_context": "K562", "n_cells": 20}
    ]


def test_unseen_single_holds_out_validation_singles_like_test():
    config = SplitConfig(
        kind="unseen_single",
        test_perturbations=("A",),
        validation_perturbations=("C",),
        validation_fraction=0.1,
    )
    a = make_splits(SCREEN, config)
    assert a.validation_perturbations == ["C"] and a.validation_targets == ["C"]
    # every C cell is in validation; the C+D combination names C, so it is excluded like A+B
    c_cells = SCREEN["perturbation"].to_numpy() == "C"
    assert set(a.labels[c_cells]) == {"validation"}
    assert a.excluded_perturbations == ["A+B", "A+E", "C+D"]
    assert not any("C" in p.split("+") for p in _perts(SCREEN, a, "train"))
    # random validation cells of the training perturbations are still drawn
    assert {"B", "D"} <= _perts(SCREEN, a, "validation")
    payload = a.to_dict(SCREEN.index)
    assert payload["validation_perturbations"] == ["C"]


def test_validation_combos_can_follow_test_rule_into_validation():
    config = SplitConfig(
        kind="unseen_single",
        test_perturbations=("A",),
        validation_perturbations=("D",),
        combos_with_test_targets="test",
    )
    a = make_splits(SCREEN, config)
    assert a.validation_perturbations == ["C+D", "D"]
    assert _perts(SCREEN, a, "test") == {"A", "A+B", "A+E"}  # A+E stays test, not validation


def test_validation_perturbations_drawn_with_the_seed():
    draws = set()
    for seed in range(6):
        config = SplitConfig(
            kind="unseen_single", test_perturbations=("A",), n_validation_perturbations=1, seed=seed
        )
        a = make_splits(SCREEN, config)
        again = make_splits(SCREEN, config)
        assert a.validation_perturbations == again.validation_perturbations
        (chosen,) = a.validation_targets
        assert chosen in {"B", "C", "D"}  # never the test single
        draws.add(chosen)
    assert len(draws) > 1
    # without validation perturbations, validation is random cells of training perturbations
    plain = make_splits(SCREEN, SplitConfig(kind="unseen_single", test_perturbations=("A",)))
    assert plain.validation_perturbations == []
    assert _perts(SCREEN, plain, "validation") <= _perts(SCREEN, plain, "train")


def test_unseen_combo_validation_combinations():
    eligible_draw = make_splits(
        SCREEN,
        SplitConfig(kind="unseen_combo", test_perturbations=("A+B",), n_validation_perturbations=1),
    )
    assert eligible_draw.validation_perturbations == ["C+D"]  # the only eligible one left
    named = make_splits(
        SCREEN,
        SplitConfig(
            kind="unseen_combo", test_perturbations=("A+B",), validation_perturbations=("A+E",)
        ),
    )
    assert _perts(SCREEN, named, "validation") >= {"A+E"}
    assert "A+E" not in _perts(SCREEN, named, "train") and "A" in _perts(SCREEN, named, "train")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"kind": "random_cells", "n_validation_perturbations": 1}, "cannot hold out validation"),
        (
            {
                "kind": "unseen_single",
                "test_perturbations": ["A"],
                "validation_perturbations": ["A"],
            },
            "held out for test",
        ),
        (
            {
                "kind": "unseen_single",
                "test_perturbations": ["A"],
                "validation_perturbations": ["Z"],
            },
            "not in the data",
        ),
        (
            {"kind": "unseen_single", "test_perturbations": ["A"], "n_validation_perturbations": 3},
            "no single perturbation to train on",
        ),
        (
            {"kind": "unseen_single", "test_perturbations": ["A"], "n_validation_perturbations": 4},
            "only 3 single perturbations are left",
        ),
        (
            {
                "kind": "unseen_combo",
                "test_perturbations": ["A+B"],
                "validation_perturbations": ["C"],
            },
            "are single perturbations",
        ),
        (
            {
                "kind": "unseen_combo",
                "test_perturbations": ["A+B", "C+D"],
                "n_validation_perturbations": 1,
            },
            "name split.validation_perturbations",
        ),
        ({"kind": "unseen_single", "n_validation_perturbations": -1}, ">= 0"),
    ],
)
def test_validation_perturbation_errors(spec, fragment):
    with pytest.raises(SplitError, match=fragment):
        make_splits(SCREEN, SplitConfig.from_dict(spec))


# ------------------------------------------------------------------ unseen_pair
LINES = _obs(
    {
        **{(CONTROL_LABEL, c): 30 for c in ("L1", "L2", "L3")},
        **{(p, c): 10 for p in ("A", "B", "C") for c in ("L1", "L2", "L3")},
        ("D", "L1"): 10,  # measured in one line only: never eligible
        ("E", "L1"): 10,
        ("E", "L2"): 10,
        ("A+B", "L1"): 10,  # names A: excluded where A is held out
        ("A+B", "L2"): 10,
    }
)


def _pair_cells(obs, pert, context):
    return (obs["perturbation"].to_numpy() == pert) & (obs["cell_context"].to_numpy() == context)


def test_unseen_pair_holds_out_the_pair_only():
    config = SplitConfig.from_dict(
        {"kind": "unseen_pair", "test_pairs": ["A@L1"], "validation_fraction": 0.0}
    )
    a = make_splits(LINES, config)
    assert a.test_pairs == [("A", "L1")]
    assert set(a.labels[_pair_cells(LINES, "A", "L1")]) == {"test"}
    # A in the other lines, L1's controls and other perturbations stay in training
    for pert, context in [("A", "L2"), ("A", "L3"), (CONTROL_LABEL, "L1"), ("B", "L1")]:
        assert set(a.labels[_pair_cells(LINES, pert, context)]) == {"train"}, (pert, context)
    # a combination naming A in L1 is excluded there, not in L2
    assert a.excluded_pairs == [("A+B", "L1")]
    assert set(a.labels[_pair_cells(LINES, "A+B", "L1")]) == {"excluded"}
    assert set(a.labels[_pair_cells(LINES, "A+B", "L2")]) == {"train"}
    assert a.counts() == {"test": 10, "excluded": 10, "train": len(LINES) - 20}
    assert a.is_held_out("A", "L1") and a.is_held_out("A+B", "L1")
    assert not a.is_held_out("A", "L2") and not a.is_held_out("B", "L1")
    assert a.test_perturbations == []  # pairs, not perturbations, are held out
    payload = a.to_dict(LINES.index, LINES)
    assert payload["test_pairs"] == [{"perturbation": "A", "cell_context": "L1"}]
    assert payload["excluded_pairs"] == [{"perturbation": "A+B", "cell_context": "L1"}]
    assert payload["fold"] is None and payload["folds"] is None


def test_unseen_pair_mapping_syntax_and_combos_to_test():
    config = SplitConfig.from_dict(
        {
            "kind": "unseen_pair",
            "test_pairs": [{"perturbation": "A", "cell_context": "L2"}, "B@L3"],
            "combos_with_test_targets": "test",
        }
    )
    assert config.test_pairs == ("A@L2", "B@L3")  # stored in one syntax
    a = make_splits(LINES, config)
    assert a.test_pairs == [("A", "L2"), ("A+B", "L2"), ("B", "L3")]
    assert a.excluded_pairs == []


def test_unseen_pair_validation_pairs_held_out_like_test():
    config = SplitConfig.from_dict(
        {
            "kind": "unseen_pair",
            "test_pairs": ["A@L1", "B@L2"],
            "validation_pairs": ["C@L3"],
            "validation_fraction": 0.2,
        }
    )
    a = make_splits(LINES, config)
    assert a.validation_pairs == [("C", "L3")]
    assert set(a.labels[_pair_cells(LINES, "C", "L3")]) == {"validation"}
    assert a.to_dict(LINES.index)["validation_pairs"] == [
        {"perturbation": "C", "cell_context": "L3"}
    ]
    # random validation cells of training pairs are still drawn, C elsewhere still trains
    assert "train" in set(a.labels[_pair_cells(LINES, "C", "L1")])


def test_unseen_pair_drawn_pairs_keep_every_perturbation_trained():
    eligible = {(p, c) for p in "ABC" for c in ("L1", "L2", "L3")}
    eligible |= {("E", "L1"), ("E", "L2")}  # D: one line only; A+B is not drawn
    for seed in range(10):
        config = SplitConfig(kind="unseen_pair", test_fraction=0.3, n_validation_pairs=3, seed=seed)
        a = make_splits(LINES, config)
        assert make_splits(LINES, config).test_pairs == a.test_pairs  # seeded
        assert len(a.test_pairs) == round(0.3 * len(eligible)) == 3
        assert set(a.test_pairs) <= eligible and len(a.validation_pairs) == 3
        assert not set(a.test_pairs) & set(a.validation_pairs)
        for pert in {p for p, _ in a.test_pairs + a.validation_pairs}:
            trained = {
                c for c in ("L1", "L2", "L3") if "train" in a.labels[_pair_cells(LINES, pert, c)]
            }
            assert trained, (seed, pert)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"test_pairs": ["D@L1"]}, "measured in one context only"),
        ({"test_pairs": ["A@L9"]}, "not measured"),
        ({"test_pairs": ["A@L1", "A@L2", "A@L3"]}, r"leave \['A'\] with no training context"),
        ({"test_pairs": ["E@L1"], "validation_pairs": ["E@L2"]}, "no training context"),
        # A+B is excluded in L1 (A held out there): holding it out in L2 leaves it untrained
        ({"test_pairs": ["A@L1", "A+B@L2"]}, r"leave \['A\+B'\]"),
        ({"test_pairs": ["A@L1"], "validation_pairs": ["A@L1"]}, "held out for test already"),
        ({"test_pairs": ["A"]}, "PERTURBATION@CONTEXT"),
        ({"test_pairs": ["A@L1@x"]}, "exactly one '@'"),
        ({"test_pairs": [{"perturbation": "A"}]}, "'perturbation' and 'cell_context'"),
        # after A@L1: one more of A, two of B and of C, one of E; A+B cannot go (excluded in L1)
        ({"test_pairs": ["A@L1"], "n_validation_pairs": 7}, "cannot hold out 7 validation pairs"),
        ({"test_perturbations": ["A"]}, "split.test_pairs"),
        ({"n_validation_perturbations": 1}, "n_validation_pairs"),
    ],
)
def test_unseen_pair_errors(spec, fragment):
    with pytest.raises(SplitError, match=fragment):
        make_splits(LINES, SplitConfig.from_dict({"kind": "unseen_pair", **spec}))


def test_unseen_pair_needs_shared_perturbations_and_pair_keys_need_the_kind():
    one_line = _obs({(CONTROL_LABEL, "X"): 5, ("A", "X"): 5, ("B", "X"): 5})
    with pytest.raises(SplitError, match="at least two cell contexts"):
        make_splits(one_line, SplitConfig(kind="unseen_pair"))
    with pytest.raises(SplitError, match="belong to kind unseen_pair"):
        SplitConfig.from_dict({"kind": "unseen_single", "test_pairs": ["A@X"]})
