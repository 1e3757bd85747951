"""Synthetic rows (``evidence.synthetic_combinations``, ``evidence.synthetic_transfers``): the
pairs made, the synthetic answers on hand-made data (exact sentences), the evidence and sources
they carry, a planted held-out pair caught by the leakage check, the config checks and the
default (off); the pooled other-contexts line (``evidence.pool_other_contexts``) they are read
with on McFaline."""

import json

import pytest

import cellrlhf.data.synthetic as synthetic
from cellrlhf.data.build import BuildError, build_datasets
from cellrlhf.data.config import ConfigError, DataBuildConfig
from cellrlhf.data.evidence_index import EvidenceIndex
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
    made = manifest["evidence"]["synthetic_combinations"]
    lengths = made.pop("genes_per_answer")
    assert made == {"examples": N, "pairs": 1, "contexts": ["K1"]}
    real = [r for r in on.sft["train"] if not r["synthetic"] and r["task"] == "perturbation_response"]  # fmt: skip
    assert lengths["synthetic"] == 5.0  # G1 G3 G2 G5 G6
    assert lengths["real"] == pytest.approx(synthetic.genes_per_answer(real), abs=0.01)
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


# synthetic transfers: three contexts; A measured in X and Y (A in Z held out), B in X, C in X
# and Y. Changes against each context's control: A@X [0 0 0 3.5 0 0.5], A@Y [0 0 1.5 0 -1.5 0.05],
# B@X [0 0 0 0 2.5 0], C@X [0 2 0 0 0 0], C@Y [0 1.3 0 0 0 0].
CONTEXTS = {
    ("control", "X"): ([5, 4, 3, 2, 1, 0], 8),
    ("control", "Y"): ([1, 1.2, 1.4, 1.6, 1.8, 0], 8),
    ("control", "Z"): ([3, 0, 2, 0, 1.2, 1], 8),
    ("A", "X"): ([5, 4, 3, 5.5, 1, 0.5], 4),
    ("A", "Y"): ([1, 1.2, 2.9, 1.6, 0.3, 0.05], 4),
    ("A", "Z"): ([0, 0, 0, 0, 0, 7], 4),  # held out
    ("B", "X"): ([5, 4, 3, 2, 3.5, 0], 4),
    ("C", "X"): ([5, 6, 3, 2, 1, 0], 4),
    ("C", "Y"): ([1, 2.5, 1.4, 1.6, 1.8, 0], 4),
}
PAIR_SPLIT = {"kind": "unseen_pair", "test_pairs": ["A@Z"]}
# the context's control plus the mean change in the other contexts (|change| < 0.1 dropped)
TRANSFERS = {
    ("A", "X"): "<cell> G1 G3 G2 G4 </cell>",  # [5 4 4.5 2 -0.5 0] (A@Y's 0.05 dropped)
    ("C", "X"): "<cell> G2 G1 G3 G4 G5 </cell>",  # [5 5.3 3 2 1 0]
    ("A", "Y"): "<cell> G4 G5 G3 G2 G1 G6 </cell>",  # [1 1.2 1.4 5.1 1.8 0.5]
    ("B", "Y"): "<cell> G5 G4 G3 G2 G1 </cell>",  # [1 1.2 1.4 1.6 4.3 0], B not measured in Y
    ("C", "Y"): "<cell> G2 G5 G4 G3 G1 </cell>",  # [1 3.2 1.4 1.6 1.8 0]
    ("B", "Z"): "<cell> G5 G1 G3 G6 </cell>",  # [3 0 2 0 3.7 1]
    ("C", "Z"): "<cell> G1 G3 G2 G5 G6 </cell>",  # [3 1.65 2 0 1.2 1]: mean of X and Y
}


def _transfer_config(n: int = 70, **evidence) -> DataBuildConfig:
    spec = {"kinds": ["other_contexts"], "write": "change", "synthetic_transfers": n, **evidence}
    return _config(PAIR_SPLIT, spec)


def test_transfer_pairs_skip_held_out_pairs_and_perturbations_measured_nowhere_else():
    measured = {"A": ["X", "Y"], "B": ["X"], "C": ["X", "Y"]}
    assert synthetic.transfer_pairs(measured, {"X", "Y", "Z"}, {("A", "Z")}) == [
        ("X", "A"),
        ("X", "C"),
        ("Y", "A"),
        ("Y", "B"),
        ("Y", "C"),
        ("Z", "B"),
        ("Z", "C"),
    ]
    assert synthetic.transfer_pairs({"B": ["X"]}, {"X"}, set()) == []


def test_synthetic_transfers_are_a_control_cell_plus_the_other_contexts_change(tmp_path):
    result = build_datasets(_transfer_config(), out_dir=tmp_path / "on", adata=_adata(CONTEXTS))
    built = open_dataset_dir(result.path)
    rows = [r for r in built.sft["train"] if r["synthetic"]]
    assert len(rows) == 70
    answers = {(r["perturbation"], r["cell_context"]): set() for r in rows}
    for row in rows:
        answers[(row["perturbation"], row["cell_context"])].add(_answer(row))
    assert answers == {key: {sentence} for key, sentence in TRANSFERS.items()}
    controls = {c: {f"c{i}" for i in range(8 * k, 8 * k + 8)} for k, c in enumerate("XYZ")}
    for row in rows:  # the base cell is a training control cell of the row's context
        assert row["cell_ids"][0] in controls[row["cell_context"]]
    (row,) = [r for r in rows if (r["perturbation"], r["cell_context"]) == ("C", "Z")][:1]
    block = _user(row["messages"]).split("\n\n")[0].splitlines()
    assert block[0] == HEADER and len(block) == 3  # C in X and in Y: the lines the answer used
    assert {(s["kind"], s["perturbation"], s["cell_context"]) for s in row["evidence_sources"]} == {
        ("other_contexts", "C", "X"),
        ("other_contexts", "C", "Y"),
        ("other_contexts", "control", "X"),
        ("other_contexts", "control", "Y"),
    }
    manifest = json.loads((result.path / "manifest.json").read_text())
    made = manifest["evidence"]["synthetic_transfers"]
    assert set(made.pop("genes_per_answer")) == {"real", "synthetic"}
    assert made == {"examples": 70, "pairs": 7, "contexts": ["X", "Y", "Z"]}
    assert "synthetic_combinations" not in manifest["evidence"]
    assert not any(r["synthetic"] for split in ("validation", "test") for r in built.sft[split])


def test_a_planted_held_out_transfer_is_caught(monkeypatch, tmp_path):
    monkeypatch.setattr(synthetic, "transfer_pairs", lambda *args: [("Z", "A")])
    with pytest.raises(LeakageError, match="held-out"):
        build_datasets(_transfer_config(5), out_dir=tmp_path / "leak", adata=_adata(CONTEXTS))


def test_transfer_config_checks(tmp_path):
    with pytest.raises(ConfigError, match="needs 'other_contexts'"):
        _config(PAIR_SPLIT, {"kinds": ["components"], "synthetic_transfers": 5})
    with pytest.raises(ConfigError, match=">= 0"):
        _transfer_config(-1)
    assert "synthetic_transfers" not in _synthetic_config().to_dict()["evidence"]
    assert _transfer_config().to_dict()["evidence"]["synthetic_min_change"] == 0.1
    one_context = {k: v for k, v in CONTEXTS.items() if k[1] == "X"}
    config = _config(
        {"kind": "random_cells", "test_fraction": 0.5},
        {"kinds": ["other_contexts"], "synthetic_transfers": 5},
    )
    with pytest.raises(BuildError, match="synthetic_transfers: no perturbation is measured"):
        build_datasets(config, out_dir=tmp_path / "y", adata=_adata(one_context))


def test_both_kinds_of_synthetic_rows_in_one_build(tmp_path):
    evidence = {
        "kinds": ["components", "other_contexts"],
        "write": "change",
        "synthetic_combinations": 6,
        "synthetic_transfers": 9,
    }
    result = build_datasets(_config(PAIR_SPLIT, evidence), out_dir=tmp_path, adata=_adata(CONTEXTS))
    rows = [r for r in open_dataset_dir(result.path).sft["train"] if r["synthetic"]]
    combos = [r for r in rows if "+" in r["perturbation"]]
    assert (len(combos), len(rows) - len(combos)) == (6, 9)
    manifest = json.loads((result.path / "manifest.json").read_text())["evidence"]
    assert manifest["synthetic_combinations"]["pairs"] == 4  # A+B, A+C, B+C in X; A+C in Y
    assert manifest["synthetic_transfers"]["pairs"] == 7


def test_pooled_other_contexts_line_reads_the_same_in_training_and_held_out_prompts(tmp_path):
    evidence = {"kinds": ["other_contexts"], "write": "change", "pool_other_contexts": True}
    result = build_datasets(_config(PAIR_SPLIT, evidence), out_dir=tmp_path, adata=_adata(CONTEXTS))
    built = open_dataset_dir(result.path)
    (test,) = [r for r in built.rl["test"] if r["perturbation"] == "A"]
    # A's mean change over X and Y: [0 0 0.75 1.75 -0.75 0.275]
    assert _user(test["prompt"]).split("\n\n")[0].splitlines()[1:] == [
        "- the same perturbation, mean over 2 other context(s): raised >=1 <cell> G4 </cell> "
        ">=0.3 <cell> G3 </cell> >=0.1 <cell> G6 </cell> lowered >=0.3 <cell> G5 </cell>"
    ]
    assert {(s["perturbation"], s["cell_context"]) for s in test["evidence_sources"]} == {
        ("A", "X"), ("A", "Y"), ("control", "X"), ("control", "Y"),
    }  # fmt: skip
    train = next(
        r for r in built.rl["train"] if (r["perturbation"], r["cell_context"]) == ("A", "X")
    )
    assert _user(train["prompt"]).split("\n\n")[0].splitlines()[1:] == [
        "- the same perturbation, mean over 1 other context(s): raised >=1 <cell> G3 </cell> "
        "lowered >=1 <cell> G5 </cell>"
    ]  # A@Y alone: G6's 0.05 is below the last tier
    index = EvidenceIndex.load(result.path / "evidence_index.json")
    assert index.block("A", "Z")[0] == _user(test["prompt"]).split("\n\n")[0]
    assert index.block("A", "W")[0] == index.block("A", "Z")[0]  # a context not in the data
    with pytest.raises(ConfigError, match="pool_other_contexts needs"):
        _config(PAIR_SPLIT, {"kinds": ["other_contexts"], "pool_other_contexts": True})
    assert "pool_other_contexts" not in _transfer_config().to_dict()["evidence"]


def test_detection_switches_unexpressed_genes_on_at_their_level_with_the_changes_odds(tmp_path):
    """``synthetic_apply: detection``: the same prompts and base cells as ``shift``; a gene the
    base cell does not express is switched on with probability change / typical level (A@Y:
    G6 +0.5 at level 10.2 / 16 -> 0.78; C@Z: G2 +1.65 at level 112.4 / 36 -> 0.53), every other
    gene as with ``shift``."""
    n = 1400
    shift = open_dataset_dir(
        build_datasets(_transfer_config(n), out_dir=tmp_path / "s", adata=_adata(CONTEXTS)).path
    )
    config = _transfer_config(n, synthetic_apply="detection")
    built = open_dataset_dir(build_datasets(config, out_dir=tmp_path / "d", adata=_adata(CONTEXTS)).path)  # fmt: skip
    rows = [r for r in built.sft["train"] if r["synthetic"]]
    twins = [r for r in shift.sft["train"] if r["synthetic"]]
    assert [_user(r["messages"]) for r in rows] == [_user(r["messages"]) for r in twins]
    assert [r["cell_ids"] for r in rows] == [r["cell_ids"] for r in twins]
    answers: dict = {}
    for row in rows:
        answers.setdefault((row["perturbation"], row["cell_context"]), []).append(_answer(row))
    on = {("A", "Y"): "<cell> G4 G5 G3 G2 G1 G6 </cell>", ("C", "Z"): "<cell> G2 G1 G3 G5 G6 </cell>"}  # fmt: skip
    off = {("A", "Y"): "<cell> G4 G5 G3 G2 G1 </cell>", ("C", "Z"): "<cell> G1 G3 G5 G6 </cell>"}  # fmt: skip
    for key, p in ((("A", "Y"), 0.5 / (10.2 / 16)), (("C", "Z"), 1.65 / (112.4 / 36))):
        got = answers[key]
        assert set(got) == {on[key], off[key]}
        share = got.count(on[key]) / len(got)
        assert abs(share - p) < 4 * (p * (1 - p) / len(got)) ** 0.5
    # genes the base cell expresses move as with shift
    for key in (("A", "X"), ("C", "X"), ("B", "Y"), ("C", "Y")):
        assert set(answers[key]) == {TRANSFERS[key]}
    with pytest.raises(ConfigError, match="synthetic_apply must be one of"):
        _transfer_config(synthetic_apply="add")
    assert "synthetic_apply" not in _transfer_config().to_dict()["evidence"]  # fingerprints kept


def test_a_build_whose_synthetic_answers_are_too_long_says_so(tmp_path, caplog):
    """Real K1 answers carry 3-5 genes; B + A's change (shift) switches on all 5: warned, with
    the fix; ``detection`` is not warned about."""
    assert synthetic.genes_per_answer([{"task": "perturbation_response", "messages": [
        {"role": "assistant", "content": "<cell> A B C </cell>"}]}]) == 3.0  # fmt: skip
    with caplog.at_level("WARNING", logger="cellrlhf.data.synthetic"):
        build_datasets(_synthetic_config(), out_dir=tmp_path / "s", adata=_adata(GROUPS))
    (message,) = [r.getMessage() for r in caplog.records]
    assert "synthetic answers carry 5 genes per cell" in message
    assert "evidence.synthetic_apply: detection" in message
    caplog.clear()
    with caplog.at_level("WARNING", logger="cellrlhf.data.synthetic"):
        config = _synthetic_config(synthetic_apply="detection")
        build_datasets(config, out_dir=tmp_path / "d", adata=_adata(GROUPS))
    assert not caplog.records
