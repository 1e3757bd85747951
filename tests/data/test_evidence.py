"""Measured evidence in perturbation prompts: exact sentences on hand-made data, leave-self-out,
components / other contexts / neighbours, the planted leak, the CLI, and the default (off)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellrlhf.data.build import build_datasets
from cellrlhf.data.cli import cli
from cellrlhf.data.config import ConfigError, DataBuildConfig
from cellrlhf.data.evidence import EvidenceBuilder
from cellrlhf.data.evidence_config import EvidenceError
from cellrlhf.data.evidence_table import load_gene_table
from cellrlhf.data.layout import open_dataset_dir
from cellrlhf.data.leakage import LeakageError, check_no_leakage
from tests.fixtures.sim_data import small_config

HEADER = "Measured evidence (pseudo-bulks of training cells):"
SIM_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "data" / "simulated.yaml"


def _adata(groups: dict[tuple[str, str], tuple[list[float], int]]):
    """Cells whose expression is the same within a (perturbation, context) group."""
    import anndata as ad

    rows, obs = [], []
    for (pert, context), (values, n) in groups.items():
        rows += [values] * n
        obs += [{"perturbation": pert, "cell_context": context}] * n
    frame = pd.DataFrame(obs, index=[f"c{i}" for i in range(len(obs))])
    frame["perturbation_type"] = "CRISPRi"
    genes = [f"G{i + 1}" for i in range(len(rows[0]))]
    return ad.AnnData(np.asarray(rows, dtype=np.float32), obs=frame, var=pd.DataFrame(index=genes))


def _config(split: dict, evidence: dict | None, **sections) -> DataBuildConfig:
    spec = {
        "name": "tiny-evidence",
        "progress": False,
        "source": {"path": "unused.h5ad"},
        "schema": {
            "columns": {
                "perturbation": "perturbation",
                "cell_context": "cell_context",
                "perturbation_type": "perturbation_type",
            }
        },
        "split": {"validation_fraction": 0.0, **split},
        "pretrain": {"enabled": False},
        "sft": {
            "tasks": {
                "perturbation_response": {"context": "pseudobulk"},
                "perturbation_effect": {},
                "cell_annotation": {"max_examples": 4},
            }
        },
        "rl": {"min_cells": 1, "n_reference_sentences": 2},
        "decoder": {"max_cells": None},
        **sections,
    }
    if evidence is not None:
        spec["evidence"] = {"min_cells": 1, **evidence}
    return DataBuildConfig.from_dict(spec)


# per-perturbation means: A [9 0 1 0 2] (4 cells), B [0 5 6 0 2], C [3 0 6 0 5] (2 cells each);
# every cell expresses 3 genes, so evidence sentences are 3 genes long.
# mean of A, B, C (each weighs 1): [4, 1.67, 4.33, 0, 3] -> G3 G1 G5
# (the cell-pooled mean [5.25 1.25 3.5 0 2.75] would give G1 G3 G5)
# leave A out: mean of B, C [1.5 2.5 6 0 3.5] -> G3 G5 G2
SINGLES = {
    ("control", "K1"): ([1, 1, 1, 1, 1], 12),
    ("A", "K1"): ([9, 0, 1, 0, 2], 4),
    ("B", "K1"): ([0, 5, 6, 0, 2], 2),
    ("C", "K1"): ([3, 0, 6, 0, 5], 2),
    ("T", "K1"): ([0, 0, 0, 7, 1], 2),
}
CONTROL_IDS = {f"c{i}" for i in range(12)}  # _adata names cells in SINGLES order
SINGLES_SPLIT = {"kind": "unseen_single", "test_perturbations": ["T"]}


def _user(messages) -> str:
    return next(m["content"] for m in messages if m["role"] == "user")


@pytest.fixture(scope="module")
def singles_built(tmp_path_factory):
    root = tmp_path_factory.mktemp("evidence")
    adata = _adata(SINGLES)
    on = build_datasets(
        _config(SINGLES_SPLIT, {"kinds": ["average_response"]}), out_dir=root / "on", adata=adata
    )
    off = build_datasets(_config(SINGLES_SPLIT, None), out_dir=root / "off", adata=adata)
    return open_dataset_dir(on.path), open_dataset_dir(off.path), on, off


def test_average_response_is_the_mean_of_per_perturbation_pseudobulks(singles_built):
    built, _, _, _ = singles_built
    (row,) = list(built.rl["test"])
    assert row["perturbation"] == "T"
    block = (
        f"{HEADER}\n- average perturbed K1 cell over 3 other measured perturbations: "
        "<cell> G3 G1 G5 </cell>"
    )
    assert _user(row["prompt"]).startswith(block + "\n\n")
    assert sorted((s["split"], s["perturbation"]) for s in row["evidence_sources"]) == [
        ("train", "A"),
        ("train", "B"),
        ("train", "C"),
    ]


def test_training_prompts_leave_their_own_perturbation_out(singles_built):
    built, _, _, _ = singles_built
    rows = {r["perturbation"]: r for r in built.rl["train"]}
    assert set(rows) == {"A", "B", "C"}
    assert "over 2 other measured perturbations: <cell> G3 G5 G2 </cell>" in _user(
        rows["A"]["prompt"]
    )
    for pert, row in rows.items():
        used = {s["perturbation"] for s in row["evidence_sources"]}
        assert used == {"A", "B", "C"} - {pert}
    for row in built.sft["train"]:
        if row["task"] in ("perturbation_response", "perturbation_effect"):
            assert _user(row["messages"]).startswith(HEADER)
            assert row["perturbation"] not in {s["perturbation"] for s in row["evidence_sources"]}
        else:
            assert HEADER not in _user(row["messages"]) and row["evidence_sources"] == []


def test_off_changes_nothing_and_on_only_adds_the_block(singles_built, tmp_path):
    on_built, off_built, on, off = singles_built
    assert "evidence_sources" not in off_built.rl["train"].column_names
    assert "evidence" not in off.manifest["config"] and "evidence" not in off.manifest
    explicit_off = build_datasets(
        _config(SINGLES_SPLIT, {"kinds": []}), out_dir=tmp_path / "off2", adata=_adata(SINGLES)
    )
    assert explicit_off.fingerprint == off.fingerprint
    assert explicit_off.manifest["part_fingerprints"] == off.manifest["part_fingerprints"]
    for split in ("train", "test"):
        for a, b in zip(on_built.rl[split], off_built.rl[split], strict=True):
            head, rest = _user(a["prompt"]).split("\n\n", 1)
            assert head.startswith(HEADER) and a["evidence_sources"]
            assert rest == _user(b["prompt"])
            assert a["prompt"][0] == b["prompt"][0]
    assert on.manifest["evidence"]["kinds"] == ["average_response"]


def test_planted_leak_of_test_cells_into_evidence_is_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(EvidenceBuilder, "SOURCE_SPLITS", ("train", "test"))
    with pytest.raises(
        LeakageError, match=r"evidence \(average_response\) uses cells of split 'test'"
    ):
        build_datasets(
            _config(SINGLES_SPLIT, {"kinds": ["average_response"]}),
            out_dir=tmp_path / "leak",
            adata=_adata(SINGLES),
        )
    assert not (tmp_path / "leak").exists()


def test_leakage_check_rejects_a_held_out_perturbation_as_source(singles_built, tmp_path):
    import shutil

    from datasets import Dataset

    built, _, on, _ = singles_built
    copy = tmp_path / "copy"
    shutil.copytree(on.path, copy)
    leaky = open_dataset_dir(copy)
    rows = leaky.rl["test"].to_list()
    rows[0]["evidence_sources"].append(
        {"kind": "neighbours", "split": "train", "perturbation": "T", "cell_context": "K1"}
    )
    leaky.rl["test"] = Dataset.from_list(rows, features=leaky.rl["test"].features)
    with pytest.raises(LeakageError, match="held-out .* perturbation: 'T'"):
        check_no_leakage(leaky)
    assert check_no_leakage(built)["evidence_rows"] > 0


# components, other contexts, neighbours: identical cells per group, so the pseudo-bulk of any
# random half of a group is that group's vector (every cell expresses 2 genes).
PAIRS = {
    ("control", "X"): ([1, 1, 1, 1, 1, 1], 8),
    ("control", "Y"): ([1, 1, 1, 1, 1, 1], 8),
    ("A", "X"): ([5, 1, 0, 0, 0, 0], 4),  # G1 G2
    ("B", "X"): ([0, 0, 4, 2, 0, 0], 4),  # G3 G4
    ("D", "X"): ([0, 0, 0, 0, 3, 1], 4),  # G5 G6
    ("A+B", "X"): ([0, 3, 0, 0, 0, 1], 4),  # G2 G6
    ("A+B", "Y"): ([0, 2, 0, 0, 0, 6], 4),  # G6 G2
}


@pytest.fixture(scope="module")
def pairs_built(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    table = root / "genes.csv"
    # A (1, 0), B (0, 1), D (1, 0.5): cos(D, A) 0.89, cos(D, A+B) 0.95, cos(D, B) 0.45
    table.write_text("symbol,d0,d1\na,1,0\nB,0,1\nD,1,0.5\n")
    evidence = {
        "kinds": ["components", "other_contexts", "neighbours"],
        "neighbours": {"table": str(table), "k": 2},
    }
    result = build_datasets(
        _config({"kind": "random_cells", "test_fraction": 0.5}, evidence),
        out_dir=root / "built",
        adata=_adata(PAIRS),
    )
    built = open_dataset_dir(result.path)
    prompts = {}
    for split in ("train", "test"):
        for row in built.rl[split]:
            prompts[(split, row["perturbation"], row["cell_context"])] = row
    return prompts


def test_components_other_contexts_and_neighbours(pairs_built):
    row = pairs_built[("test", "A+B", "X")]
    assert _user(row["prompt"]).split("\n\n")[0] == "\n".join(
        [
            HEADER,
            "- <pert> A </pert> alone in X: <cell> G1 G2 </cell>",
            "- <pert> B </pert> alone in X: <cell> G3 G4 </cell>",
            "- the same perturbation in Y: <cell> G6 G2 </cell>",
            "- <pert> D </pert> (gene similarity 0.95) in X: <cell> G5 G6 </cell>",
        ]
    )
    assert {(s["kind"], s["perturbation"], s["cell_context"]) for s in row["evidence_sources"]} == {
        ("components", "A", "X"),
        ("components", "B", "X"),
        ("other_contexts", "A+B", "Y"),
        ("neighbours", "D", "X"),
    }
    assert {s["split"] for s in row["evidence_sources"]} == {"train"}


def test_missing_evidence_is_written_not_dropped(pairs_built):
    lines = _user(pairs_built[("train", "A+B", "Y")]["prompt"]).split("\n\n")[0].splitlines()
    assert lines[1:4] == [
        "- <pert> A </pert> alone in Y: not measured",
        "- <pert> B </pert> alone in Y: not measured",
        "- the same perturbation in X: <cell> G2 G6 </cell>",
    ]
    assert lines[4].startswith("- perturbations with similar genes in Y: not measured (")
    lines = _user(pairs_built[("test", "D", "X")]["prompt"]).split("\n\n")[0].splitlines()
    assert lines[1:] == [  # a single has no components; its neighbours never include itself
        "- the same perturbation in other contexts: not measured",
        "- <pert> A B </pert> (gene similarity 0.95) in X: <cell> G2 G6 </cell>",
        "- <pert> A </pert> (gene similarity 0.89) in X: <cell> G1 G2 </cell>",
    ]


def test_gene_table_formats_and_errors(tmp_path):
    frame = pd.DataFrame({"gene": ["KLF1", "cebpa"], "x": [1.0, 0.0], "y": [0.0, 2.0]})
    frame.to_parquet(tmp_path / "t.parquet")
    table = load_gene_table(tmp_path / "t.parquet")
    np.testing.assert_allclose(table.vector(["CEBPA"]), [0.0, 1.0])
    np.testing.assert_allclose(table.vector(["KLF1", "CEBPA"]), [2**-0.5, 2**-0.5])
    assert table.vector(["KLF1", "GATA1"]) is None and table.missing(["GATA1"]) == ["GATA1"]
    bad = {
        "dup.csv": ("g,x\nA,1\na,2\n", "more than once"),
        "zero.csv": ("g,x\nA,0\n", "all-zero"),
        "text.csv": ("g,x\nA,high\n", "not numeric"),
        "nan.csv": ("g,x\nA,\n", "missing or infinite"),
        "t.tsv": ("g\tx\n", "unknown suffix"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(EvidenceError, match=message):
            load_gene_table(tmp_path / name)
    with pytest.raises(EvidenceError, match="does not exist"):
        load_gene_table(tmp_path / "none.csv")


def test_config_section_is_checked():
    base = small_config().to_dict()
    for evidence, message in [
        ({"kinds": ["avg"]}, "unknown kind"),
        ({"kinds": ["neighbours"]}, "needs evidence.neighbours.table"),
        ({"kinds": ["components"], "k": 3}, "unknown key"),
        ({"kinds": ["components"], "min_cells": "5"}, "evidence.min_cells must be an integer"),
        ({"kinds": "components"}, "evidence.kinds must be a list"),
        ({"neighbours": {"k": 0}}, "k must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            DataBuildConfig.from_dict({**base, "evidence": evidence})
    on = DataBuildConfig.from_dict({**base, "evidence": {"kinds": ["average_response"]}})
    assert DataBuildConfig.from_dict(on.to_dict()) == on
    assert "evidence" not in small_config().to_dict()


def test_cli_build_with_evidence_passes_the_check(tmp_path, capsys):
    out = tmp_path / "sim"
    args = [
        "build", "--config", str(SIM_CONFIG), "--out", str(out), "--no-progress",
        "--set", "source.simulate.n_cells=500", "--set", "source.simulate.n_genes=60",
        "--set", "sft.tasks.perturbation_response.max_examples=20", "--set", "rl.min_cells=5",
        "--set", "evidence.kinds=[average_response, components, other_contexts]",
        "--set", "evidence.min_cells=5",
    ]  # fmt: skip
    assert cli(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fingerprint"]
    built = open_dataset_dir(out)
    assert built.manifest["leakage_check"]["evidence_rows"] > 0
    test_perts = set(built.splits["test_perturbations"])
    for row in built.rl["test"]:
        assert _user(row["prompt"]).startswith(HEADER)
        assert not test_perts & {s["perturbation"] for s in row["evidence_sources"]}
    assert cli(["check", str(out)]) == 0


@pytest.mark.realdata
@pytest.mark.slow
def test_norman_mcfaline_evidence_config_builds_on_real_data(real_data_dir, tmp_path):
    from cellrlhf.data.config import load_config

    config = load_config(
        SIM_CONFIG.parent / "norman_mcfaline_evidence.yaml",
        ["progress=false", "pretrain.max_cells=500", "sft.tasks.cell_annotation.max_examples=100"],
    )
    result = build_datasets(config, out_dir=tmp_path / "real", data_dir=real_data_dir)
    built = open_dataset_dir(result.path)
    assert result.manifest["leakage_check"]["evidence_rows"] > 0
    held = set(built.splits["test_perturbations"]) | set(built.splits["validation_perturbations"])
    for split in ("train", "validation", "test"):
        assert built.rl[split].num_rows > 0
        for row in built.rl[split]:
            assert "average perturbed" in _user(row["prompt"])
            used = {s["perturbation"] for s in row["evidence_sources"]}
            assert used and not used & (held | {row["perturbation"]})


def test_control_twin_carries_only_the_contexts_evidence(singles_built, pairs_built):
    """The model's own reference prompt shows what is known about the context (the average
    response), never perturbation-level evidence, and is otherwise its prompt's twin."""
    built, _, _, _ = singles_built
    row = next(r for r in built.rl["test"] if r["perturbation"] == "T")
    evidence, question = _user(row["prompt"]).split("\n\n", 1)
    twin_evidence, twin_question = _user(row["control_prompt"]).split("\n\n", 1)
    assert twin_evidence == evidence  # average_response of K1 (T is held out either way)
    assert twin_question == question.replace("<pert> T </pert>", "<pert> <control> </pert>")
    pair = pairs_built[("test", "A+B", "X")]
    assert _user(pair["control_prompt"]).split("\n\n")[0] == HEADER
    assert "<pert> <control> </pert>" in _user(pair["control_prompt"])


def test_response_task_teaches_control_answers(singles_built):
    """``control_fraction`` of the response examples answer the control prompt with a control
    cell; without evidence the prompt shows the control pseudo-bulk."""
    _, off, _, _ = singles_built
    train = off.sft["train"].filter(lambda r: r["task"] == "perturbation_response")
    controls = [r for r in train if r["perturbation"] == "control"]
    perturbed = [r for r in train if r["perturbation"] != "control"]
    assert len(controls) == max(1, round(0.1 * len(perturbed)))
    for row in controls:
        assert "<pert> <control> </pert>" in _user(row["messages"])
        # a control cell expresses all five genes; no perturbed cell does
        assert set(row["messages"][-1]["content"].split()[1:-1]) == {"G1", "G2", "G3", "G4", "G5"}
        assert row["cell_ids"][0] in CONTROL_IDS


def test_evidence_note_names_each_kind_and_its_same_information_baseline():
    from cellrlhf.data.evidence_config import evidence_note

    assert evidence_note({}) is None
    assert evidence_note({"config": {"evidence": {"kinds": []}}}) is None
    note = evidence_note({"config": {"evidence": {"kinds": ["other_contexts", "neighbours"]}}})
    assert "`other_contexts` (vs `context_transfer`), `neighbours` (vs `nearest`)" in note
