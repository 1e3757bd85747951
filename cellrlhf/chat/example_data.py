"""The example cells of the chat apps: scanpy's ``pbmc68k_reduced`` (700 PBMCs, 765 genes).

The file ships inside scanpy (no download). Its ``raw`` holds log-normalized expression (``X`` of
the reduced object is scaled, with negative values, so it cannot be ranked); the example keeps
``raw``, the UMAP and the cell-type labels (``obs["cell_type"]``).
"""

from __future__ import annotations

__all__ = ["example_cells", "EXAMPLE_NAME"]

EXAMPLE_NAME = "pbmc68k_reduced (scanpy): 700 PBMCs"


def example_cells():
    """The example AnnData: ``X`` log-normalized, ``obs["cell_type"]``, ``obsm["X_umap"]``.

    Raises
    ------
    ImportError
        scanpy is not installed (``pip install scanpy``).
    """
    try:
        import scanpy as sc
    except ImportError as err:
        raise ImportError(
            "the example cells come with scanpy: pip install scanpy (or upload your own .h5ad)."
        ) from err
    reduced = sc.datasets.pbmc68k_reduced()
    adata = reduced.raw.to_adata()
    adata.obs = reduced.obs[["bulk_labels", "louvain"]].rename(columns={"bulk_labels": "cell_type"})
    adata.obsm["X_umap"] = reduced.obsm["X_umap"]
    adata.uns = {"cellrlhf_example": {"source": "scanpy.datasets.pbmc68k_reduced", "X": "log1p"}}
    return adata
