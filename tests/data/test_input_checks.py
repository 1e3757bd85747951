"""Checks of the source expression before a build: double log, cells without expression, float16."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from cellrlhf.data.build import build_datasets
from cellrlhf.data.expression import as_supported_dtype
from cellrlhf.data.input_checks import (
    ExpressionScaleError,
    ValueSample,
    check_transform_fits,
    drop_empty_cells,
    nonzero_per_row,
)
from cellrlhf.data.layout import open_dataset_dir
from tests.fixtures.sim_data import small_config


def _log1p_cp10k(X):
    X = sp.csr_matrix(X, dtype=np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    scaled = sp.diags(np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)) @ X
    return sp.csr_matrix(scaled.log1p(), dtype=np.float32)


def test_value_sample_tells_log_scale_from_counts():
    assert ValueSample(np.array([0.7, 1.3, 2.9, 4.1])).looks_log_scale()
    assert not ValueSample(np.array([1.0, 2.0, 7.0, 30.0])).looks_log_scale()  # counts
    assert not ValueSample(np.array([0.5, 120.3, 4000.7])).looks_log_scale()  # CP10k, no log
    assert not ValueSample(np.zeros(0)).looks_log_scale()


def test_log1p_transform_on_log_data_is_refused_before_anything_is_written(tmp_path, sim_adata):
    logged = sim_adata.copy()
    logged.X = _log1p_cp10k(sim_adata.X)
    out = tmp_path / "out"
    with pytest.raises(ExpressionScaleError, match="already looks log-transformed") as err:
        build_datasets(small_config(), out_dir=out, adata=logged)
    assert "expression.transform: none" in str(err.value)
    assert not out.exists()
    # counts pass, and so does the log data with transform none
    assert check_transform_fits(sim_adata.X, "log1p_cp10k") is not None
    assert check_transform_fits(logged.X, "none") is None


def test_nonzero_per_row_counts_values_not_stored_zeros():
    X = sp.csr_matrix(np.array([[0, 2, 0], [0, 0, 0], [1, 1, 3]], dtype=np.float32))
    X.data[0] = 0.0  # stored zero: row 0 is empty
    assert nonzero_per_row(X).tolist() == [0, 0, 3]
    assert nonzero_per_row(X.toarray()).tolist() == [0, 0, 3]
    kept, dropped = drop_empty_cells(X, np.array([0, 2]))
    assert kept.tolist() == [2] and dropped == 1


def test_cells_without_expression_are_dropped_and_counted(tmp_path, sim_adata, caplog):
    adata = sim_adata.copy()
    X = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X)
    empty = [3, 50, 700]
    X[empty] = 0
    adata.X = sp.csr_matrix(X)
    with caplog.at_level("WARNING"):
        result = build_datasets(small_config(), out_dir=tmp_path / "out", adata=adata)
    assert "dropped 3 of" in caplog.text
    assert result.manifest["source"]["n_cells_dropped_no_expression"] == 3
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"]["n_cells_dropped_no_expression"] == 3
    built = open_dataset_dir(tmp_path / "out")
    empty_ids = set(adata.obs_names[empty])
    assert not empty_ids & set(built.pretrain["cell_id"])
    assert all("<cell> </cell>" not in text for text in built.pretrain["text"])
    for split in built.sft.values():
        for ids in split["cell_ids"]:
            assert not empty_ids & set(ids)


def test_dense_float16_is_read_as_float32(tmp_path, sim_adata, caplog):
    adata = sim_adata.copy()
    X = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X)
    adata.X = X.astype(np.float16)
    wrapped = as_supported_dtype(adata.X)
    assert wrapped[2:4].dtype == np.float32
    np.testing.assert_array_equal(wrapped[2:4], X[2:4].astype(np.float16).astype(np.float32))
    path = tmp_path / "f16.h5ad"
    adata.write_h5ad(path)
    config = small_config(source={"path": str(path)})
    with caplog.at_level("INFO"):
        result = build_datasets(config, out_dir=tmp_path / "out")
    assert "float16: reading its values as float32" in caplog.text
    assert result.manifest["counts"]["sft"]["train"] > 0
