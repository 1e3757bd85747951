"""What the web app shows: the cell map, the cell table and the predicted-response plot."""

from __future__ import annotations

import numpy as np

__all__ = ["label_column", "cell_map", "response_figure"]

_LABEL_COLUMNS = (
    "cell_type",
    "cell_context",
    "celltype",
    "cell_line",
    "bulk_labels",
    "leiden",
    "louvain",
)
_EMBEDDINGS = ("X_umap", "X_tsne", "X_draw_graph_fa", "X_pca")


def label_column(adata) -> str | None:
    """An ``obs`` column to colour cells by: a known label name, else the first categorical
    column with 2-40 categories."""
    for name in _LABEL_COLUMNS:
        if name in adata.obs.columns:
            return name
    for name in adata.obs.columns:
        col = adata.obs[name]
        if str(col.dtype) == "category" and 2 <= len(col.cat.categories) <= 40:
            return name
    return None


def _pca_2d(adata, rows: np.ndarray, layer: str | None, seed: int) -> np.ndarray:
    import scipy.sparse as sp

    X = adata.layers[layer] if layer else adata.X
    block = X[rows]
    block = block.toarray() if sp.issparse(block) else np.asarray(block)
    block = np.log1p(np.maximum(block.astype(np.float64), 0)) if block.max() > 50 else block
    var = block.var(axis=0)
    keep = np.argsort(-var)[: min(2000, block.shape[1])]
    centered = block[:, keep] - block[:, keep].mean(axis=0)
    rng = np.random.default_rng(seed)
    # randomized range finder: two components are enough for a map
    sketch = centered @ rng.standard_normal((centered.shape[1], 12))
    q, _ = np.linalg.qr(sketch)
    u, s, _ = np.linalg.svd(q.T @ centered, full_matrices=False)
    return (q @ u[:, :2]) * s[:2]


def cell_map(adata, *, layer: str | None = None, max_points: int = 5000, seed: int = 0):
    """Coordinates of (up to ``max_points``) cells for the map, and the table of cells.

    Uses a stored embedding (``obsm``: UMAP, t-SNE, ... PCA), else a quick PCA of the
    expression. Returns a DataFrame with ``row`` (position in the data), ``cell`` (obs name),
    ``label`` (see :func:`label_column`, ``"cells"`` when none), ``x``, ``y``.
    """
    import pandas as pd

    n = adata.n_obs
    rows = np.arange(n)
    if n > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    key = next((k for k in _EMBEDDINGS if k in adata.obsm and adata.obsm[k].shape[1] >= 2), None)
    if key is not None:
        xy = np.asarray(adata.obsm[key])[rows, :2]
    elif n >= 3:
        xy = _pca_2d(adata, rows, layer, seed)
    else:
        xy = np.column_stack([rows, np.zeros(len(rows))])
    column = label_column(adata)
    labels = (
        adata.obs[column].astype(str).to_numpy()[rows] if column else np.full(len(rows), "cells")
    )
    return pd.DataFrame(
        {
            "row": rows,
            "cell": np.asarray(adata.obs_names)[rows],
            "label": labels,
            "x": xy[:, 0].astype(float),
            "y": xy[:, 1].astype(float),
        }
    )


def response_figure(prediction, *, n: int = 12):
    """Bar chart of the top changed genes (predicted minus decoded control), up and down."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    up = prediction.top_up.head(n)
    down = prediction.top_down.head(n)
    genes = list(down["gene"])[::-1] + list(up["gene"])[::-1]
    delta = list(down["delta"])[::-1] + list(up["delta"])[::-1]
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.28 * len(genes) + 1.2)))
    if genes:
        colors = ["#2166ac" if d < 0 else "#b2182b" for d in delta]
        ax.barh(np.arange(len(genes)), delta, color=colors)
        ax.set_yticks(np.arange(len(genes)), genes, fontsize=8)
        ax.axvline(0, color="black", linewidth=0.8)
    else:
        ax.text(0.5, 0.5, "no gene changed", ha="center", va="center", transform=ax.transAxes)
    params = prediction.adata.uns["cellrlhf_prediction"]["params"]
    ctx = prediction.adata.obs["cell_context"].iloc[0] if prediction.adata.n_obs else ""
    ax.set_xlabel("predicted - control (decoded expression)")
    ax.set_title(
        f"{params['perturbation']} in {ctx}: top changed genes\n"
        f"{prediction.adata.n_obs} predicted cell(s), valid gene fraction "
        f"{prediction.valid_fraction:.2f}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
