import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellrlhf.reward.pseudobulk import group_codes, group_means, pseudobulk


def test_group_codes_sorted_strings():
    cats, codes = group_codes(["b", "a", "b", 3])
    assert cats.tolist() == ["3", "a", "b"]
    assert codes.tolist() == [2, 1, 2, 0]


@pytest.mark.parametrize("sparse", [False, True])
def test_group_means(sparse):
    X = np.array([[1.0, 0], [3, 2], [5, 5], [0, 1]])
    codes = np.array([0, 0, 2, 0])
    got = group_means(sp.csr_matrix(X) if sparse else X, codes, 3)
    np.testing.assert_allclose(got[0], [4 / 3, 1.0])
    assert np.all(np.isnan(got[1]))  # empty group
    np.testing.assert_allclose(got[2], [5.0, 5.0])


def test_pseudobulk_of_adata():
    X = np.array([[1.0, 1], [3, 1], [0, 4], [2, 2]])
    adata = ad.AnnData(
        X,
        obs=pd.DataFrame({"p": ["ctrl", "ctrl", "A", "B"]}, index=list("wxyz")),
        var=pd.DataFrame(index=["g1", "g2"]),
    )
    bulks = pseudobulk(adata, pert_col="p", control="ctrl")
    assert bulks.perturbations.tolist() == ["A", "B"]
    np.testing.assert_allclose(bulks.control, [2.0, 1.0])
    np.testing.assert_allclose(bulks.deltas, [[-2.0, 3.0], [0.0, 1.0]])
    assert bulks.n_cells.tolist() == [1, 1] and bulks.n_control == 2
    np.testing.assert_allclose(bulks.row("B"), [2.0, 2.0])
    with pytest.raises(KeyError, match="no cells"):
        bulks.row("C")
    with pytest.raises(ValueError, match="control label"):
        pseudobulk(adata, pert_col="p", control="control")
    with pytest.raises(KeyError, match="pert_col"):
        pseudobulk(adata, pert_col="condition", control="ctrl")
