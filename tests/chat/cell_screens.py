"""Small screens made of the example cells, for the web app's population predictions.

Imported by the population and web tests (the tiny model knows these cells' genes).
"""

from __future__ import annotations

import numpy as np

CONTEXTS = ("CD14+ Monocyte", "CD19+ B")
MEASURED = "SPI1"


def perturbed_screen(pbmc):
    """Two contexts of the example cells; in each, 60% ``control`` cells and the rest labelled
    ``SPI1`` with SPI1 raised to the context's highest value + 1 (a measured response)."""
    import scipy.sparse as sp

    adata = pbmc[pbmc.obs["cell_type"].isin(CONTEXTS)].copy()
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    labels = np.array(["control"] * adata.n_obs, dtype=object)
    X = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X)
    column = list(adata.var_names).index(MEASURED)
    for context in CONTEXTS:
        rows = np.flatnonzero(adata.obs["cell_type"].to_numpy() == context)
        treated = rows[int(0.6 * len(rows)) :]
        labels[treated] = MEASURED
        X[treated, column] = X[rows].max() + 1.0
    adata.X = sp.csr_matrix(X)
    adata.obs["perturbation"] = labels
    adata.obs = adata.obs[["perturbation", "cell_type"]]
    return adata


def low_vocabulary_cells(pbmc, keep: int = 20):
    """The first 60 example cells with all but ``keep`` genes renamed to names no model knows."""
    adata = pbmc[:60].copy()
    names = [g if i < keep else f"NOVEL{i}" for i, g in enumerate(adata.var_names)]
    adata.var_names = names
    return adata
