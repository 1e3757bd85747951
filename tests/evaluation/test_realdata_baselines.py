"""Baselines and ceilings on the Norman 2019 part of perturbench_devel.h5ad (pilot split)."""

import numpy as np
import pytest

from cellrlhf.evaluation.comparison import SPLIT_HALF, compare_methods
from cellrlhf.evaluation.eval_report import summary_table

TEST_SINGLES = ["HK2", "MAP4K3", "MAP4K5", "MIDN", "PLK4", "SGK1"]
TEST_COMBOS = ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"]


@pytest.mark.realdata
@pytest.mark.slow
def test_norman_baselines_and_ceilings(data_dir):
    import anndata as ad

    from cellrlhf.cell2text.decoder import ExpressionDecoder

    path = data_dir / "perturbench_devel.h5ad"
    if not path.exists():
        pytest.skip(f"{path.name} not in the data directory")
    adata = ad.read_h5ad(path)
    norman = adata[adata.obs["dataset"] == "norman19"].copy()
    labels = norman.obs["perturbation"].astype(str).to_numpy()
    is_test = np.isin(labels, TEST_SINGLES + TEST_COMBOS)
    train = norman[~is_test].copy()
    test = norman[is_test | (labels == "control")].copy()
    decoder = ExpressionDecoder.fit(train, method="global")
    evaluations = compare_methods(
        test, train=train, baselines=("mean", "additive"), decoders={"global": decoder}, de=False
    )
    s = summary_table(evaluations, spearman_brown_from=SPLIT_HALF).set_index(["method", "kind"])
    # the pilot's hard bar: additive combos ~0.87; mean baseline far below on combos
    assert s.loc[("additive", "combo"), "pearson_delta"] > 0.8
    assert s.loc[("mean", "combo"), "pearson_delta"] < 0.4
    # the representation ceiling with a global decoder: ~0.84 in the pilot
    assert s.loc[("representation_global", "all"), "pearson_delta"] > 0.75
    assert (
        s.loc[(SPLIT_HALF, "combo"), "pearson_delta"]
        > s.loc[(SPLIT_HALF, "single"), "pearson_delta"]
    )
