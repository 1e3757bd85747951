"""Evidence written as changes (``evidence.write: change``) and singles shown as their own
component (``components_of_singles``): exact lines on hand-made data, the size classes as a
property, the leakage rules for control references, and the config checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellrlhf.data.build import build_datasets
from cellrlhf.data.config import ConfigError, DataBuildConfig
from cellrlhf.data.evidence import change_classes
from cellrlhf.data.layout import open_dataset_dir
from cellrlhf.data.leakage import LeakageError, check_no_leakage
from tests.data.test_evidence import HEADER, PAIRS, SINGLES, SINGLES_SPLIT, _adata, _config, _user
from tests.fixtures.sim_data import small_config

CHANGE = {"write": "change"}


def test_change_classes_on_a_small_case():
    change = [2.0, 0.5, -0.2, 0.05, 0.35, -1.2, 0.35]
    raised, lowered = change_classes(change, list("ABCDEFG"), (1.0, 0.3, 0.1), 20)
    assert raised == [(1.0, ["A"]), (0.3, ["B", "E", "G"])]  # D (0.05) is below every class
    assert lowered == [(1.0, ["F"]), (0.1, ["C"])]
    raised, lowered = change_classes(change, list("ABCDEFG"), (1.0, 0.3, 0.1), 2)
    assert raised == [(1.0, ["A"]), (0.3, ["B"])] and lowered == [(1.0, ["F"]), (0.1, ["C"])]
    assert change_classes(np.zeros(3), list("ABC"), (0.1,), 5) == ([], [])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=30),
    st.integers(1, 10),
)
def test_change_classes_properties(values, max_genes):
    tiers = (1.0, 0.3, 0.1)
    genes = [f"G{i}" for i in range(len(values))]
    change = dict(zip(genes, values, strict=True))
    for sign, classes in zip((1, -1), change_classes(values, genes, tiers, max_genes), strict=True):
        written = [g for _, gs in classes for g in gs]
        assert len(written) == len(set(written)) <= max_genes
        sizes = [sign * change[g] for g in written]
        assert sizes == sorted(sizes, reverse=True)  # largest first, across classes
        for tier, gs in classes:
            upper = tiers[tiers.index(tier) - 1] if tier != tiers[0] else np.inf
            assert gs and all(tier <= sign * change[g] < upper for g in gs)
        # every gene changed enough is written unless the cap is full
        eligible = [g for g in genes if sign * change[g] >= tiers[-1]]
        assert len(written) == min(len(eligible), max_genes)


@pytest.fixture(scope="module")
def change_built(tmp_path_factory):
    root = tmp_path_factory.mktemp("change")
    singles = build_datasets(
        _config(
            SINGLES_SPLIT,
            {**CHANGE, "kinds": ["average_response", "components"], "components_of_singles": True},
        ),
        out_dir=root / "singles",
        adata=_adata(SINGLES),
    )
    pairs = build_datasets(
        _config(
            {"kind": "random_cells", "test_fraction": 0.5},
            {**CHANGE, "kinds": ["components", "other_contexts"]},
        ),
        out_dir=root / "pairs",
        adata=_adata(PAIRS),
    )
    return open_dataset_dir(singles.path), open_dataset_dir(pairs.path), singles


def _block(row) -> list[str]:
    return _user(row["prompt"]).split("\n\n")[0].splitlines()


def test_changes_are_written_against_the_training_controls(change_built):
    singles, pairs, _ = change_built
    (test,) = list(singles.rl["test"])
    # mean of A, B, C minus the control [1 1 1 1 1]: [3, 0.67, 3.33, -1, 2]
    assert _block(test) == [
        HEADER,
        "- average perturbed K1 cell over 3 other measured perturbations: raised >=1 <cell> G3 "
        "G1 G5 </cell> >=0.3 <cell> G2 </cell> lowered >=1 <cell> G4 </cell>",
        "- <pert> T </pert> alone in K1: not measured",  # held out: nothing to show
    ]
    sources = {(s["kind"], s["split"], s["perturbation"]) for s in test["evidence_sources"]}
    assert ("average_response", "train", "control") in sources
    row = next(
        r for r in pairs.rl["test"] if r["perturbation"] == "A+B" and r["cell_context"] == "X"
    )
    assert _block(row) == [
        HEADER,
        "- <pert> A </pert> alone in X: raised >=1 <cell> G1 </cell> lowered >=1 <cell> G3 G4 G5 "
        "G6 </cell>",
        "- <pert> B </pert> alone in X: raised >=1 <cell> G3 G4 </cell> lowered >=1 <cell> G1 G2 "
        "G5 G6 </cell>",
        # against Y's own controls
        "- the same perturbation in Y: raised >=1 <cell> G6 G2 </cell> lowered >=1 <cell> G1 G3 "
        "G4 G5 </cell>",
    ]
    controls = {(s["split"], s["cell_context"]) for s in row["evidence_sources"]
                if s["perturbation"] == "control"}  # fmt: skip
    assert controls == {("train", "X"), ("train", "Y")}


def test_a_training_single_shows_itself_as_its_component(change_built):
    singles, _, _ = change_built
    rows = {r["perturbation"]: r for r in singles.rl["train"]}
    # A: [9 0 1 0 2] - 1 = [8 -1 0 -1 1]
    assert _block(rows["A"])[2] == (
        "- <pert> A </pert> alone in K1: raised >=1 <cell> G1 G5 </cell> lowered >=1 <cell> G2 "
        "G4 </cell>"
    )
    assert ("components", "A") in {
        (s["kind"], s["perturbation"]) for s in rows["A"]["evidence_sources"]
    }


def test_control_references_pass_the_leakage_check_and_held_out_controls_do_not(
    change_built, tmp_path
):
    import shutil

    from datasets import Dataset

    singles, _, result = change_built
    assert check_no_leakage(singles)["evidence_rows"] > 0
    copy = tmp_path / "copy"
    shutil.copytree(result.path, copy)
    leaky = open_dataset_dir(copy)
    rows = leaky.rl["test"].to_list()
    rows[0]["evidence_sources"].append(
        {"kind": "components", "split": "test", "perturbation": "control", "cell_context": "K1"}
    )
    leaky.rl["test"] = Dataset.from_list(rows, features=leaky.rl["test"].features)
    with pytest.raises(LeakageError, match="uses cells of split 'test'"):
        check_no_leakage(leaky)


def test_change_options_are_checked_and_left_out_of_the_config_at_their_defaults():
    base = small_config().to_dict()
    for evidence, message in [
        ({"kinds": ["components"], "write": "ranks"}, "evidence.write must be one of"),
        ({"kinds": ["components"], "change_tiers": [0.1, 1.0]}, "strictly descending"),
        ({"kinds": ["components"], "change_tiers": [1.0, 0.0]}, "positive"),
        ({"kinds": ["components"], "change_genes": 0}, "change_genes must be >= 1"),
        ({"kinds": ["average_response"], "components_of_singles": True}, "needs 'components'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            DataBuildConfig.from_dict({**base, "evidence": evidence})
    plain = DataBuildConfig.from_dict({**base, "evidence": {"kinds": ["components"]}})
    assert set(plain.to_dict()["evidence"]) == {"kinds", "neighbours", "min_cells"}
    on = DataBuildConfig.from_dict(
        {**base, "evidence": {"kinds": ["components"], **CHANGE, "components_of_singles": True}}
    )
    assert on.to_dict()["evidence"]["change_tiers"] == [1.0, 0.3, 0.1]
    assert DataBuildConfig.from_dict(on.to_dict()) == on
