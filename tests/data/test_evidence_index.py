"""The saved evidence index (``evidence_index.json``): it writes every row's evidence block and
sources of built datasets (one code path with the build), round-trips through its file,
composes the block of a combination nobody measured, and refuses malformed files and a missing
gene table with clear messages."""

import json
import shutil

import pytest

from cellrlhf.data.build import build_datasets
from cellrlhf.data.evidence_config import EvidenceError
from cellrlhf.data.evidence_index import EvidenceIndex
from cellrlhf.data.evidence_table import load_gene_table
from cellrlhf.data.layout import EVIDENCE_INDEX_FILENAME, DatasetDirError, open_dataset_dir
from cellrlhf.data.schema import CONTROL_LABEL
from tests.data.test_evidence import HEADER, PAIRS, SINGLES, SINGLES_SPLIT, _adata, _config, _user
from tests.fixtures.sim_data import SIM_SETTINGS, small_config

PERTURBATION_TASKS = ("perturbation_response", "perturbation_effect")
GENE_TABLE = "symbol,d0,d1\na,1,0\nB,0,1\nD,1,0.5\n"


def _builds(root, write: str) -> dict:
    """Hand-made builds that use every kind, written as ``write``."""
    table = root / "genes.csv"
    table.write_text(GENE_TABLE)
    written = {"write": write}
    configs = {
        "singles": (
            _config(
                SINGLES_SPLIT,
                {**written, "kinds": ["average_response", "components"],
                 "components_of_singles": True},
            ),
            SINGLES,
        ),
        "pairs": (
            _config(
                {"kind": "random_cells", "test_fraction": 0.5},
                {**written, "kinds": ["average_response", "components", "other_contexts",
                                     "neighbours"],
                 "neighbours": {"table": str(table), "k": 2}},
            ),
            PAIRS,
        ),
    }  # fmt: skip
    return {
        name: open_dataset_dir(
            build_datasets(config, out_dir=root / write / name, adata=_adata(groups)).path
        )
        for name, (config, groups) in configs.items()
    }


@pytest.fixture(scope="module", params=["profile", "change"])
def built(request, tmp_path_factory):
    return _builds(tmp_path_factory.mktemp(f"index-{request.param}"), request.param)


@pytest.fixture(scope="module")
def sim_built(tmp_path_factory):
    """The simulator (two contexts, combinations, longer sentences), written as changes."""
    config = small_config(
        source={"simulate": {**SIM_SETTINGS, "n_cells": 600, "n_genes": 60}},
        pretrain={"enabled": False},
        evidence={
            "kinds": ["average_response", "components", "other_contexts"],
            "min_cells": 5,
            "write": "change",
        },
    )
    out = tmp_path_factory.mktemp("sim-index") / "sim"
    return open_dataset_dir(build_datasets(config, out_dir=out).path)


def _check_every_row(dataset) -> int:
    """Assert the index writes each row's block and sources; the number of blocks checked."""
    index = dataset.evidence_index()
    table_path = index.gene_table_path
    table = load_gene_table(table_path) if table_path else None
    checked = 0
    for split, rows in dataset.sft.items():
        for row in rows:
            if row["task"] not in PERTURBATION_TASKS:
                assert row["evidence_sources"] == [] and HEADER not in _user(row["messages"])
                continue
            text, sources = index.block(row["perturbation"], row["cell_context"], table)
            assert _user(row["messages"]).split("\n\n", 1)[0] == text, (split, row["perturbation"])
            assert sources == row["evidence_sources"]
            checked += 1
    for split, rows in dataset.rl.items():
        for row in rows:
            text, sources = index.block(row["perturbation"], row["cell_context"], table)
            assert _user(row["prompt"]).split("\n\n", 1)[0] == text, (split, row["perturbation"])
            assert sources == row["evidence_sources"]
            control = index.block(CONTROL_LABEL, row["cell_context"])[0]
            assert _user(row["control_prompt"]).split("\n\n", 1)[0] == control
            checked += 2
    return checked


def test_the_index_writes_every_rows_block_and_sources(built):
    for dataset in built.values():
        assert _check_every_row(dataset) > 10
        evidence = dataset.manifest["evidence"]
        assert evidence["index_file"] == EVIDENCE_INDEX_FILENAME
        assert len(evidence["index_sha256"]) == 64


def test_the_index_writes_every_rows_block_on_the_simulator(sim_built):
    assert _check_every_row(sim_built) > 50
    index = sim_built.evidence_index()
    assert len(index.contexts) == 2 and index.config.write == "change"


def test_save_load_round_trip(built, tmp_path):
    index = built["pairs"].evidence_index()
    again = EvidenceIndex.load(index.save(tmp_path / "copy.json"))
    assert again.to_json() == index.to_json()
    table = load_gene_table(index.gene_table_path)
    for pert in ("A", "B", "D", "A+B", "A+D", "E", CONTROL_LABEL):
        for context in ("X", "Y", "Z"):
            assert again.block(pert, context, table) == index.block(pert, context, table)
    assert again.gene_table_sha256 == table.sha256 and again.sort_targets


def test_an_unmeasured_combination_gets_its_measured_components(built):
    index = built["pairs"].evidence_index()
    table = load_gene_table(index.gene_table_path)
    assert index.label(["D", "a"]) == "A+D"  # spelled and ordered as the data writes labels
    assert index.label(["b", "A"]) == "A+B" and index.label([]) == CONTROL_LABEL
    text, sources = index.block("A+D", "X", table)
    lines = text.splitlines()
    assert lines[0] == HEADER
    measured = index.measured("X")
    assert lines[1].startswith(
        f"- average perturbed X cell over {len(measured)} other measured perturbations: "
    )  # nothing to leave out: every measured perturbation of X
    assert lines[2] == f"- <pert> A </pert> alone in X: {index.units[('A', 'X')].text}"
    assert lines[3] == f"- <pert> D </pert> alone in X: {index.units[('D', 'X')].text}"
    assert lines[4] == "- the same perturbation in other contexts: not measured"
    assert lines[5].startswith("- <pert> B </pert> (gene similarity")  # shares no target
    components = {(s["perturbation"], s["cell_context"]) for s in sources
                  if s["kind"] == "components" and s["perturbation"] != CONTROL_LABEL}  # fmt: skip
    assert components == {("A", "X"), ("D", "X")}
    if built["pairs"].manifest["config"]["evidence"].get("write") != "change":
        assert lines[2:4] == [
            "- <pert> A </pert> alone in X: <cell> G1 G2 </cell>",
            "- <pert> D </pert> alone in X: <cell> G5 G6 </cell>",
        ]
    # a context nobody measured: every line says so
    lines = index.block("A+D", "Z", table)[0].splitlines()
    assert lines[1:5] == [
        "- average perturbed Z cell: not measured (no other perturbation measured in this context)",
        "- <pert> A </pert> alone in Z: not measured",
        "- <pert> D </pert> alone in Z: not measured",
        "- the same perturbation in other contexts: not measured",
    ]


def test_neighbours_need_the_gene_table(built):
    index = built["pairs"].evidence_index()
    with pytest.raises(
        EvidenceError, match=r"needs the gene-similarity table .*genes\.csv.*gene_table="
    ):
        index.block("A+B", "X")
    assert index.block(CONTROL_LABEL, "X")[0].startswith(HEADER)  # context kinds only


def test_malformed_index_files_are_refused(built, tmp_path):
    payload = built["singles"].evidence_index().to_json()
    unit_text_a_number = json.loads(json.dumps(payload))
    unit_text_a_number["units"][0]["text"] = 3
    wrong_count = json.loads(json.dumps(payload))
    wrong_count["average_response"][0]["n"] = 99
    no_leave_out = json.loads(json.dumps(payload))
    no_leave_out["average_response"] = no_leave_out["average_response"][:1]
    cases = {
        "not JSON": ("{oops", "is not valid JSON"),
        "other format": ({"format": "cellrlhf.dataset"}, "is not an evidence index"),
        "newer": ({**payload, "version": 99}, "has version 99; this cellrlhf reads version 1"),
        "no units": ({k: v for k, v in payload.items() if k != "units"}, r"lacks \['units'\]"),
        "text": (unit_text_a_number, "is malformed .*expected a text"),
        "count": (wrong_count, "should average .* measured perturbations"),
        "leave-out": (no_leave_out, "left out in 'K1' should average"),
        "config": (
            {**payload, "config": {**payload["config"], "kinds": ["avg"]}},
            "unknown kind",
        ),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(EvidenceError, match=message):
            EvidenceIndex.load(path)
    with pytest.raises(EvidenceError, match="no evidence index at .*cellrlhf data build"):
        EvidenceIndex.load(tmp_path / "absent.json")


def test_dataset_dir_reader_and_model_files(built, tmp_path):
    from cellrlhf.sft.model_dir import write_model_files

    dataset = built["singles"]
    off = build_datasets(
        _config(SINGLES_SPLIT, None), out_dir=tmp_path / "off", adata=_adata(SINGLES)
    )
    assert open_dataset_dir(off.path).evidence_index() is None
    assert not (off.path / EVIDENCE_INDEX_FILENAME).exists()
    copy = tmp_path / "older"
    shutil.copytree(dataset.path, copy)
    (copy / EVIDENCE_INDEX_FILENAME).unlink()
    with pytest.raises(DatasetDirError, match="built with evidence but has no evidence_index"):
        open_dataset_dir(copy).evidence_index()
    target = tmp_path / "model"
    target.mkdir()
    write_model_files(target, dataset=dataset, run_config={}, info={}, card_name="m")
    assert (
        target / EVIDENCE_INDEX_FILENAME
    ).read_bytes() == dataset.evidence_index_path.read_bytes()
