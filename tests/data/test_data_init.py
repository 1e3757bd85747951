"""``cellrlhf data init``: the config it writes from a user's own .h5ad holds the right guesses,
and ``cellrlhf data build`` accepts it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from cellrlhf.data.cli import cli as data_cli
from cellrlhf.data.config import load_config
from cellrlhf.data.init_config import write_data_config


def _user_screen(tmp_path: Path) -> Path:
    """A CRISPRi screen as a user might have it: own column names, 'non-targeting' controls,
    raw counts in X, and a distractor column that also holds a 'control' label."""
    from cellrlhf.data.simulate import simulate_perturbation_data

    adata = simulate_perturbation_data(300, 60, n_perturbations=6, n_combinations=2, seed=1)
    obs = adata.obs.rename(
        columns={"perturbation": "guide_target", "cell_context": "cell_line", "batch": "gem_group"}
    )
    obs["guide_target"] = obs["guide_target"].astype(str).replace({"control": "non-targeting"})
    adata.obs = obs.drop(columns=["dose"])
    del adata.layers["log1p"]
    path = tmp_path / "my_screen.h5ad"
    adata.write_h5ad(path)
    return path


def _one_context_drug_screen(tmp_path: Path) -> Path:
    """One cell line, log-normalized values, Ensembl var_names with a symbol column, DMSO."""
    from cellrlhf.data.simulate import simulate_perturbation_data

    adata = simulate_perturbation_data(200, 40, n_perturbations=3, n_combinations=0, n_contexts=1)
    adata.X = adata.layers.pop("log1p")
    adata.var["gene_symbols"] = adata.var_names.astype(str)
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    labels = adata.obs["perturbation"].astype(str)
    adata.obs = adata.obs[["cell_context"]].assign(
        compound=labels.map(lambda p: "DMSO" if p == "control" else f"drug{p}").to_numpy()
    )
    adata.obs = adata.obs.drop(columns=["cell_context"])
    path = tmp_path / "one_line.h5ad"
    adata.write_h5ad(path)
    return path


def _written(tmp_path, h5ad, name="cfg.yaml"):
    out, inspection = write_data_config(h5ad, tmp_path / name)
    return yaml.safe_load(out.read_text()), out.read_text(), out, inspection


def test_init_guesses_a_user_screen_and_the_config_builds(tmp_path, capsys):
    h5ad = _user_screen(tmp_path)
    out = tmp_path / "my_data.yaml"
    assert data_cli(["init", str(h5ad), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    config, text = yaml.safe_load(out.read_text()), out.read_text()
    columns = config["schema"]["columns"]
    assert columns == {
        "perturbation": "guide_target",
        "cell_context": "cell_line",
        "perturbation_type": "perturbation_type",
        "batch": "gem_group",
    }
    assert config["schema"]["control_values"] == ["non-targeting"]
    assert config["expression"]["transform"] == "log1p_cp10k"  # raw counts
    assert config["source"] == {"path": str(h5ad)}
    assert config["sft"]["context_noun"] == "cell_line"
    assert config["split"]["kind"] == "unseen_single"
    assert config["rl"]["enabled"] is True
    assert config["decoder"] == {"method": "neighbours"}  # magnitudes a rank cannot carry
    assert "(other candidates: sim_class)" in text  # the distractor is named, not chosen
    assert "# CHECK" in text
    assert data_cli(["init", str(h5ad), "--out", str(out)]) == 2  # never overwritten silently
    assert "pass --force" in capsys.readouterr().err

    built = tmp_path / "built"
    status = data_cli(
        ["build", "--config", str(out), "--out", str(built), "--no-progress"]
        + ["--set", "rl.min_cells=5", "--set", "split.test_fraction=0.34"]
    )
    assert status == 0, capsys.readouterr().err
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["source"]["n_cells_selected"] == 300
    import anndata as ad

    n_perturbed = int((ad.read_h5ad(h5ad).obs["guide_target"] != "non-targeting").sum())
    assert manifest["perturbation_types"] == {"CRISPRi": n_perturbed}  # read by the chat


def test_init_single_context_turns_annotation_off_and_finds_symbols(tmp_path):
    config, text, out, inspection = _written(tmp_path, _one_context_drug_screen(tmp_path))
    assert inspection.single_context and inspection.expression.kind == "log"
    assert config["sft"]["tasks"]["cell_annotation"] == {"enabled": False}
    assert "one cell context only: the cell_annotation task is off" in text
    assert config["schema"]["columns"]["perturbation"] == "compound"
    assert config["schema"]["columns"]["cell_context"] == {"value": "cells"}
    assert config["schema"]["columns"]["perturbation_type"] == {"value": "drug"}
    assert config["schema"]["control_values"] == ["DMSO"]
    assert config["expression"]["transform"] == "none"  # already log-normalized
    assert config["expression"]["gene_symbols"] == "gene_symbols"  # var_names are Ensembl IDs
    assert config["pretrain"]["metadata_prefix"] == []
    load_config(out)  # a valid config as written


def test_init_on_unperturbed_scaled_cells_uses_raw_and_cell_tasks_only(tmp_path):
    sc = pytest.importorskip("scanpy")
    adata = sc.datasets.pbmc68k_reduced()
    assert np.asarray(adata.X).min() < 0  # scaled: ranks of X are not expression ranks
    h5ad = tmp_path / "pbmc.h5ad"
    adata.write_h5ad(h5ad)
    config, text, out, inspection = _written(tmp_path, h5ad)
    assert config["source"]["use_raw"] is True
    assert config["schema"]["columns"]["perturbation"] == {"value": "control"}
    assert config["schema"]["columns"]["cell_context"] == "bulk_labels"
    assert config["expression"]["transform"] == "none"  # .raw is log-normalized
    assert config["rl"] == {"enabled": False}
    assert config["decoder"] == {"method": "per_gene"}
    assert set(config["sft"]["tasks"]) == {"cell_annotation", "cell_generation"}
    assert "no perturbation column with control labels" in text
    load_config(out)


def test_init_reports_a_missing_file(tmp_path, capsys):
    assert data_cli(["init", str(tmp_path / "nothing.h5ad")]) == 2
    assert "no such file" in capsys.readouterr().err


def _shared_file(name: str) -> Path:
    for directory in os.environ.get("CELLRLHF_DATA_DIR", "").split(os.pathsep):
        if directory and (Path(directory) / name).is_file():
            return Path(directory) / name
    pytest.skip(f"{name} not found in $CELLRLHF_DATA_DIR")


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "perturbation", "context", "transform"),
    [
        ("perturbench_devel.h5ad", "perturbation", "cell_type", "none"),
        ("zhao2021_glioblastoma_panobinostat.h5ad", "condition", "patient_id", "log1p_cp10k"),
        ("kang2018_liger_600cells.h5ad", "condition", {"value": "cells"}, "log1p_cp10k"),
    ],
)
def test_init_on_the_shared_data_writes_configs_that_build(
    tmp_path, capsys, name, perturbation, context, transform
):
    config, _, out, _ = _written(tmp_path, _shared_file(name))
    assert config["schema"]["columns"]["perturbation"] == perturbation
    assert config["schema"]["columns"]["cell_context"] == context
    assert config["expression"]["transform"] == transform
    status = data_cli(
        ["build", "--config", str(out), "--out", str(tmp_path / "b"), "--no-progress"]
    )
    assert status == 0, capsys.readouterr().err
