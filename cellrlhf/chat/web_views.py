"""What the web app shows: the cell map, the cell table and the predicted-response plot."""

from __future__ import annotations

import numpy as np

__all__ = [
    "label_column",
    "cell_map",
    "roles_text",
    "prediction_summary",
    "genes_table",
    "response_figure",
]

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


def roles_text(roles) -> str:
    """One line on what the data's columns were taken to mean (for the data panel)."""
    if roles.perturbation:
        shown = ", ".join(roles.controls[:3])
        text = f"Perturbation column `{roles.perturbation}` (controls: {shown})"
    else:
        text = "No perturbation column: every cell counts as a control"
    if roles.context:
        text += f"; cell context column `{roles.context}`"
    return f"{text}; {roles.n_known} of {roles.n_genes} genes are in the model's vocabulary."


def prediction_summary(result) -> str:
    """Markdown of a :class:`~cellrlhf.chat.population.PopulationPrediction`."""
    pred = result.prediction
    where = f" in {result.context}" if result.context else ""
    n_pred = pred.adata.n_obs
    if result.invalid:
        answer = (pred.answers[0] if pred.answers else "").strip()[:120] or "(empty)"
        return (
            f"**Invalid prediction: {pred.perturbation}{where}.** None of the {n_pred} predicted "
            f"cells holds a valid gene (valid gene fraction {pred.valid_fraction:.2f}), so "
            f"there is no predicted change to show. The model's first answer: `{answer}`"
        )
    lines = [
        f"**{pred.perturbation}**{where}: {result.n_valid} predicted cell(s) from "
        f"{result.n_controls} control cell(s) of this context; predicted population minus "
        f"control population (both decoded). Valid gene fraction {pred.valid_fraction:.2f}."
    ]
    if result.n_valid < n_pred:
        lines.append(
            f"{n_pred - result.n_valid} predicted cell(s) held no valid gene and are left out."
        )
    if result.evaluation is not None:
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics().items())
        lines.append(
            f"**Measured**: {result.n_measured} cells of the data with {pred.perturbation}"
            f"{where}. Metrics of `cellrlhf evaluate` (predicted vs measured change, "
            f"{result.evaluation.params['n_genes']} shared genes): {metrics}."
        )
    else:
        lines.append(
            f"The data has no cells with {pred.perturbation}{where}: nothing measured to "
            "compare with."
        )
    return "  \n".join(lines)


def genes_table(result, *, n: int = 12):
    """The top changed genes: ``direction``, ``gene``, ``predicted`` (and ``measured``)."""
    top = result.top_genes(n)
    columns = ["direction", "gene", "predicted"] + (["measured"] if "measured" in top else [])
    return top[columns].round(4)


def response_figure(result, *, n: int = 12):
    """Bars of the top predicted changes (population vs control) and the measured ones beside."""
    from cellrlhf.figures import subplots

    top = result.top_genes(n).iloc[::-1].reset_index(drop=True)
    measured = "measured" in top
    fig, ax = subplots(figsize=(6.5, max(2.5, 0.32 * len(top) + 1.4)))
    y = np.arange(len(top))
    height = 0.4 if measured else 0.8
    colors = ["#2166ac" if d < 0 else "#b2182b" for d in top["predicted"]]
    ax.barh(
        y + (height / 2 if measured else 0),
        top["predicted"],
        height,
        color=colors,
        label="predicted",
    )
    if measured:
        ax.barh(y - height / 2, top["measured"], height, color="#7f7f7f", label="measured")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(y, top["gene"], fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    pred = result.prediction
    ax.set_xlabel("mean change from control (decoded expression)")
    where = f" in {result.context}" if result.context else ""
    ax.set_title(
        f"{pred.perturbation}{where}: {result.n_valid} predicted cells vs "
        f"{result.n_controls} control cells"
        + (f", {result.n_measured} measured" if measured else ""),
        fontsize=9,
    )
    fig.tight_layout()
    return fig
