"""Synthetic combinations (``evidence.synthetic_combinations``): the pairs made, the synthetic
answers on hand-made data (exact sentences), the evidence and sources they carry, a planted
held-out pair caught by the leakage check, the config checks and the default (off)."""

import json

import pytest

import cellrlhf.data.synthetic as synthetic
from cellrlhf.data.build import BuildError, build_datasets
from cellrlhf.data.config import ConfigError, DataBuildConfig
from cellrlhf.data.layout import open_dataset_dir
from cellrlhf.data.leakage import LeakageError
from cellrlhf.data.synthetic import synthetic_pairs
from tests.data.test_evidence import HEADER, _adata, _config, _user

# constant cells per group; genes G1..G6. Changes against the control [1 1 1 1 1 0]:
# A [8 -1 0 -1 1 0.5], B [-1 4 5 -1 1 0]
GROUPS = {
    ("control", "K1"): ([1, 1, 1, 1, 1, 0], 12),
    ("A", "K1"): ([9, 0, 1, 0, 2, 0.5], 4),
    ("B", "K1"): ([0, 5, 6, 0, 2, 0], 4),
    ("C", "K1"): ([3, 0, 6, 0, 5, 0], 4),
    ("A+C", "K1"): ([9, 0, 6, 0, 5, 0], 4),  # a real training combination
    ("B+C", "K1"): ([2, 4, 9, 0, 5, 0], 4),  # held out
}
A_CELLS = {f"c{i}" for i in range(12, 16)}  # _adata names cells in GROUPS order
B_CELLS = {f"c{i}" for i in range(16, 20)}
SPLIT = {"kind": "unseen_combo", "test_perturbations": ["B+C"]}
N = 40


def _synthetic_config(**evidence) -> DataBuildConfig:
    spec = {"kinds": ["components"], "write": "change", "synthetic_combinations": N, **evidence}
    return _config(SPLIT, spec)


def _answer(row) -> str:
    return next(m["content"] for m in row["messages"] if m["role"] == "assistant")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    adata = _adata(GROUPS)
    on = build_datasets(_synthetic_config(), out_dir=root / "on", adata=adata)
    strict = build_datasets(
        _synthetic_config(synthetic_min_change=1.0), out_dir=root / "strict", adata=adata
    )
    return open_dataset_dir(on.path), open_dataset_dir(strict.path), on


def test_synthetic_pairs_skip_measured_and_held_out_combinations():
    measured = {"K1": ["b", "A", "C"], "K2": ["A"]}
    assert synthetic_pairs(measured, {frozenset({"A", "C"})}) == [
        ("K1", "A", "b"),
        ("K1", "b", "C"),
    ]
    assert synthetic_pairs({"K1": ["A"]}, set()) == []


def test_synthetic_rows_are_the_additive_cell_of_a_training_pair(built):
    on, _, result = built
    rows = [r for r in on.sft["train"] if r["synthetic"]]
    assert len(rows) == N
    assert {r["perturbation"] for r in rows} == {"A+B"}  # A+C trains on its cells, B+C is held out
    # base A [9 0 1 0 2 0.5] + B's change = [8 4 6 -1 3 0.5] -> clipped; base B + A's change: same
    assert {_answer(r) for r in rows} == {"<cell> G1 G3 G2 G5 G6 </cell>"}
    bases = [r["cell_ids"][0] for r in rows]
    assert set(bases) <= A_CELLS | B_CELLS
    assert set(bases) & A_CELLS and set(bases) & B_CELLS  # either single is the base
    block = _user(rows[0]["messages"]).split("\n\n")[0].splitlines()
    assert block[0] == HEADER
    assert block[1] == (
        "- <pert> A </pert> alone in K1: raised >=1 <cell> G1 G5 </cell> >=0.3 <cell> G6 </cell> "
        "lowered >=1 <cell> G2 G4 </cell>"
    )
    assert block[2].startswith("- <pert> B </pert> alone in K1: raised >=1 <cell> G3 G2 G5 </cell>")
    sources = {(s["split"], s["perturbation"]) for r in rows for s in r["evidence_sources"]}
    assert sources == {("train", "A"), ("train", "B"), ("train", "control")}
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["evidence"]["synthetic_combinations"] == {
        "examples": N,
        "pairs": 1,
        "contexts": ["K1"],
    }
    for split in ("validation", "test"):
        assert not any(r["synthetic"] for r in on.sft[split])
    assert sum(not r["synthetic"] for r in on.sft["train"]) > 0


def test_changes_below_the_minimum_are_not_added(built):
    _, strict, _ = built
    rows = [r for r in strict.sft["train"] if r["synthetic"]]
    # A's change of G6 (0.5) is dropped: a B cell gains no G6; an A cell keeps its own 0.5
    by_base = {r["cell_ids"][0] in A_CELLS: _answer(r) for r in rows}
    assert by_base == {
        True: "<cell> G1 G3 G2 G5 G6 </cell>",
        False: "<cell> G1 G3 G2 G5 </cell>",
    }


def test_builds_are_seeded_and_the_option_is_off_by_default(built, tmp_path):
    on, _, _ = built
    again = open_dataset_dir(
        build_datasets(_synthetic_config(), out_dir=tmp_path / "again", adata=_adata(GROUPS)).path
    )
    assert list(again.sft["train"]) == list(on.sft["train"])
    off = _config(SPLIT, {"kinds": ["components"], "write": "change"})
    assert "synthetic_combinations" not in off.to_dict()["evidence"]  # fingerprints unchanged
    plain = build_datasets(off, out_dir=tmp_path / "off", adata=_adata(GROUPS))
    assert "synthetic" not in open_dataset_dir(plain.path).sft["train"].column_names


def test_a_planted_held_out_pair_is_caught(monkeypatch, tmp_path):
    monkeypatch.setattr(synthetic, "synthetic_pairs", lambda measured, known: [("K1", "B", "C")])
    with pytest.raises(LeakageError, match="B\\+C|B', 'C|held-out"):
        build_datasets(_synthetic_config(), out_dir=tmp_path / "leak", adata=_adata(GROUPS))


def test_config_checks(tmp_path):
    with pytest.raises(ConfigError, match="needs 'components'"):
        _config(SPLIT, {"kinds": ["average_response"], "synthetic_combinations": 5})
    with pytest.raises(ConfigError, match=">= 0"):
        _synthetic_config(synthetic_min_change=-0.1)
    no_task = _config(
        SPLIT,
        {"kinds": ["components"], "synthetic_combinations": 5},
        sft={"tasks": {"perturbation_effect": {}}},
    )
    with pytest.raises(BuildError, match="enable sft.tasks.perturbation_response"):
        build_datasets(no_task, out_dir=tmp_path / "x", adata=_adata(GROUPS))
    # the one pair of measured singles is the held-out combination: nothing to make
    only_held = {k: v for k, v in GROUPS.items() if k[0] in ("control", "A", "B")}
    only_held[("A+B", "K1")] = ([8, 4, 6, 0, 3, 0], 4)
    config = _config(
        {"kind": "unseen_combo", "test_perturbations": ["A+B"]},
        {"kinds": ["components"], "synthetic_combinations": 5},
    )
    with pytest.raises(BuildError, match="no pair of measured training singles"):
        build_datasets(config, out_dir=tmp_path / "y", adata=_adata(only_held))


def test_control_cell_prompts_show_a_training_control_cell(tmp_path):
    config = _config(
        SPLIT,
        {"kinds": ["components"], "write": "change", "synthetic_combinations": 6},
        sft={"tasks": {"perturbation_response": {"context": "control_cell"}}},
    )
    built = open_dataset_dir(build_datasets(config, out_dir=tmp_path, adata=_adata(GROUPS)).path)
    rows = [r for r in built.sft["train"] if r["synthetic"]]
    controls = {f"c{i}" for i in range(12)}
    assert len(rows) == 6 and all(r["cell_ids"][1] in controls for r in rows)
    for row in rows:  # the control cell [1 1 1 1 1 0] follows the evidence block
        task = _user(row["messages"]).split("\n\n", 1)[1]
        cell = task.split("<cell>", 1)[1].split("</cell>", 1)[0].split()
        assert sorted(cell) == ["G1", "G2", "G3", "G4", "G5"]
