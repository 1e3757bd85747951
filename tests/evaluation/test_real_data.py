import json
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from cellrlhf.data.layout import DatasetDirError
from cellrlhf.evaluation.real_data import (
    REAL_CELLS_KEY,
    SourceChecksumError,
    SourceNotFoundError,
    real_cells,
)


def _expected_log1p_cp10k(sim, ids):
    """The simulator's counts of ``ids``, log1p(CP10k) over all genes (what the build used)."""
    rows = sim.obs_names.get_indexer(ids)
    counts = sp.csr_matrix(sim.X)[rows].toarray().astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.log1p(counts / np.where(totals > 0, totals, 1) * 1e4)


def test_test_split_round_trip_matches_the_split_manifest_and_the_simulator(
    sim_dataset_dir, sim_real_test
):
    from cellrlhf.data.simulate import simulate_perturbation_data

    manifest = json.loads((sim_dataset_dir / "manifest.json").read_text())
    splits = json.loads((sim_dataset_dir / "splits.json").read_text())
    real = sim_real_test
    test_ids = splits["cells"]["test"]
    # the split's own cells first, in manifest order, then the borrowed training controls
    assert real.obs_names[: len(test_ids)].tolist() == test_ids
    borrowed = real.obs.iloc[len(test_ids) :]
    assert len(borrowed) > 0 and set(borrowed["perturbation"]) == {"control"}
    assert set(borrowed["split"]) == {"train"} and set(borrowed.index) <= set(
        splits["cells"]["train"]
    )
    assert set(borrowed["cell_context"]) == set(real.obs["cell_context"][: len(test_ids)])
    # every training control of those contexts is there (none silently dropped)
    sim = simulate_perturbation_data(**manifest["config"]["source"]["simulate"])
    obs = sim.obs.loc[splits["cells"]["train"]]
    contexts = set(real.obs["cell_context"])
    all_train_controls = obs.index[
        (obs["perturbation"].astype(str) == "control") & obs["cell_context"].isin(contexts)
    ]
    assert set(all_train_controls) == set(borrowed.index)
    # values: the layer on the vocabulary after the build's transform, cell for cell
    assert (
        list(real.var_names)
        == json.loads((sim_dataset_dir / "gene_vocab.json").read_text())["genes"]
    )
    assert list(real.var_names) == list(sim.var_names)
    np.testing.assert_allclose(
        real.X.toarray(), _expected_log1p_cp10k(sim, real.obs_names), rtol=1e-5, atol=1e-6
    )
    assert (
        real.obs.loc[test_ids, "perturbation"].tolist()
        == sim.obs.loc[test_ids, "perturbation"].astype(str).tolist()
    )
    params = real.uns[REAL_CELLS_KEY]["params"]
    assert params["simulated"] is True and params["transform"] == "log1p_cp10k"
    assert params["fingerprint"] == manifest["fingerprint"]


def test_train_split_has_its_own_controls_and_nothing_borrowed(sim_dataset_dir):
    splits = json.loads((sim_dataset_dir / "splits.json").read_text())
    train = real_cells(sim_dataset_dir, "train", progress=False)
    assert train.obs_names.tolist() == splits["cells"]["train"]
    assert (train.obs["perturbation"] == "control").sum() > 0
    assert set(train.obs["split"]) == {"train"}
    held_out = set(splits["test_perturbations"])
    assert not held_out & set(train.obs["perturbation"])


def _copy_dataset(src, dst, edit):
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    edit(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_a_different_source_is_refused(sim_dataset_dir, tmp_path):
    def change_seed(manifest):
        manifest["config"]["source"]["simulate"]["seed"] += 1

    copy = _copy_dataset(sim_dataset_dir, tmp_path / "d", change_seed)
    with pytest.raises(SourceChecksumError, match="different data"):
        real_cells(copy, "test", progress=False)


def test_a_missing_source_file_points_at_the_data_dir(sim_dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLRLHF_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("CELLRLHF_CACHE_DIR", str(tmp_path / "cache"))

    def registry_source(manifest):
        manifest["config"]["source"] = {"dataset": "kang2018_liger_600cells"}

    copy = _copy_dataset(sim_dataset_dir, tmp_path / "d", registry_source)
    with pytest.raises(SourceNotFoundError, match="--data-dir") as err:
        real_cells(copy, "test", progress=False)
    assert "CELLRLHF_DATA_DIR" in str(err.value)


def test_unknown_split_and_unbuilt_directory_are_clear_errors(sim_dataset_dir, tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        real_cells(sim_dataset_dir, "holdout")
    with pytest.raises(DatasetDirError, match="not a built cellrlhf dataset"):
        real_cells(tmp_path, "test")
