"""``real_cells`` on the real Norman / McFaline-Figueroa subset (skipped without the data)."""

from pathlib import Path

import numpy as np
import pytest

from cellrlhf.data.build import build_datasets
from cellrlhf.data.config import load_config
from cellrlhf.evaluation.real_data import SourceNotFoundError, real_cells

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "data" / "norman_mcfaline.yaml"
FAST = [
    "progress=false",
    "pretrain.enabled=false",
    "sft.enabled=false",
    "de.method=welch",
]

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def real_build(data_dir, tmp_path_factory):
    if not (data_dir / "perturbench_devel.h5ad").exists():
        pytest.skip("perturbench_devel.h5ad not in the data directory")
    out = tmp_path_factory.mktemp("real") / "data"
    build_datasets(load_config(CONFIG, FAST), out_dir=out, data_dir=data_dir)
    return out


def test_real_test_cells_are_the_source_cells_with_a_control_per_context(real_build, data_dir):
    import json

    import anndata as ad

    splits = json.loads((real_build / "splits.json").read_text())
    real = real_cells(real_build, "test", data_dir=data_dir, progress=False)
    test_ids = splits["cells"]["test"]
    assert real.obs_names[: len(test_ids)].tolist() == test_ids
    for ctx in set(real.obs["cell_context"]):
        in_ctx = real.obs[real.obs["cell_context"] == ctx]
        assert (in_ctx["perturbation"] == "control").sum() >= 10, ctx
    source = ad.read_h5ad(data_dir / "perturbench_devel.h5ad")
    rows = source.obs_names.get_indexer(real.obs_names)
    assert (rows >= 0).all() and list(real.var_names) == list(source.var_names)
    expected = source.X[rows]
    expected = expected.toarray() if hasattr(expected, "toarray") else np.asarray(expected)
    np.testing.assert_allclose(real.X.toarray(), expected, rtol=1e-6)
    assert set(real.obs["cell_context"]) <= {"k562", "A172", "T98G", "U87MG"}


def test_without_the_data_directory_the_error_names_it(real_build, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLRLHF_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CELLRLHF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("cellrlhf.data.registry._bundled_path", lambda entry: None)
    import cellrlhf.data.registry as registry

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr("pooch.retrieve", offline)
    assert registry.REGISTRY["perturbench_devel"].url
    with pytest.raises(SourceNotFoundError, match="--data-dir"):
        real_cells(real_build, "test", progress=False)


def test_mcfaline_validation_pairs_are_measured_against_the_training_controls(
    data_dir, tmp_path_factory
):
    # unseen_pair on real data: each validation pair's context keeps its 90 training controls,
    # the split's own few are left out, as the validation prompts were built (and as test is)
    from datasets import load_from_disk

    if not (data_dir / "perturbench_devel.h5ad").exists():
        pytest.skip("perturbench_devel.h5ad not in the data directory")
    config = CONFIG.parent / "mcfaline_unseen_pair_evidence.yaml"
    out = tmp_path_factory.mktemp("mcf") / "data"
    build_datasets(
        load_config(config, [*FAST, "evidence.kinds=[]"]), out_dir=out, data_dir=data_dir
    )
    prompts = load_from_disk(str(out / "rl"))["validation"]
    assert len(prompts) > 0 and set(prompts["control_split"]) == {"train"}
    val = real_cells(out, "validation", data_dir=data_dir, progress=False)
    train = real_cells(out, "train", data_dir=data_dir, progress=False).obs
    controls = val.obs[val.obs["perturbation"] == "control"]
    assert set(controls["split"]) == {"train"}
    for ctx in set(prompts["cell_context"]):
        expected = train.index[
            (train["cell_context"] == ctx) & (train["perturbation"] == "control")
        ]
        assert set(controls.index[controls["cell_context"] == ctx]) == set(expected)
    for pert, ctx in zip(prompts["perturbation"], prompts["cell_context"], strict=True):
        mine = val.obs[(val.obs["perturbation"] == pert) & (val.obs["cell_context"] == ctx)]
        assert len(mine) > 0 and set(mine["split"]) == {"validation"}
