"""Structured results of :class:`~cellrlhf.chat.cell_lm.CellLM` predictions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["PerturbationPrediction", "top_changed_genes", "profiles_adata"]


def top_changed_genes(predicted: np.ndarray, control: np.ndarray, genes, *, n: int = 20) -> tuple:
    """Genes with the largest increase and decrease of mean ``predicted`` over ``control``.

    Parameters
    ----------
    predicted, control
        Mean expression per gene (vocabulary order), same scale.
    genes
        Gene symbols in the same order.
    n
        Genes per direction.

    Returns
    -------
    ``(up, down)`` DataFrames with columns ``gene``, ``predicted``, ``control``, ``delta``; only
    genes that actually changed in that direction are listed (ties broken by gene order).
    """
    import pandas as pd

    predicted = np.asarray(predicted, dtype=np.float64)
    control = np.asarray(control, dtype=np.float64)
    delta = predicted - control
    table = pd.DataFrame(
        {"gene": list(genes), "predicted": predicted, "control": control, "delta": delta}
    )
    order_up = np.lexsort((np.arange(len(delta)), -delta))
    order_down = np.lexsort((np.arange(len(delta)), delta))
    up = table.iloc[[i for i in order_up if delta[i] > 0][:n]].reset_index(drop=True)
    down = table.iloc[[i for i in order_down if delta[i] < 0][:n]].reset_index(drop=True)
    return up, down


def profiles_adata(matrix, genes, obs: dict, *, uns: dict | None = None, layers=None):
    """An AnnData of decoded profiles (cells x vocabulary genes, float32 CSR)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    obs_df = pd.DataFrame(obs)
    obs_df.index = obs_df.index.astype(str)
    adata = ad.AnnData(
        X=sp.csr_matrix(matrix, dtype=np.float32),
        obs=obs_df,
        var=pd.DataFrame(index=pd.Index(list(genes), name="gene")),
        uns=uns or {},
    )
    for name, value in (layers or {}).items():
        adata.layers[name] = sp.csr_matrix(value, dtype=np.float32)
    return adata


@dataclass
class PerturbationPrediction:
    """Predicted response of cells to a perturbation.

    Attributes
    ----------
    adata
        One row per (input cell, sample): ``X`` is the profile decoded from the predicted cell
        sentence; ``layers["control"]`` the decoded input cell (the same encode -> decode
        round trip, so both sides are on the same footing); ``obs`` holds ``input_cell``,
        ``perturbation``, ``cell_context``, ``predicted_sentence``, ``input_sentence``,
        ``valid_fraction``, ``closed``; ``var`` holds ``mean_predicted``, ``mean_control``,
        ``delta``; ``uns["cellrlhf_prediction"]["params"]`` how it was made.
    top_up, top_down
        Genes with the largest mean increase / decrease against the decoded control inputs.
    answers
        The model's raw answers.
    report
        :class:`~cellrlhf.cell2text.decode_report.DecodeReport` of the predicted sentences.
    """

    adata: object
    top_up: object
    top_down: object
    answers: list[str] = field(default_factory=list)
    report: object = None

    @property
    def perturbation(self) -> str:
        return str(self.adata.uns["cellrlhf_prediction"]["params"]["perturbation"])

    @property
    def valid_fraction(self) -> float:
        """Share of generated words that were distinct vocabulary genes."""
        return float(self.report.valid_fraction) if self.report is not None else float("nan")

    def write(self, path: str | Path) -> Path:
        """Write ``adata`` as ``.h5ad`` (the tables are in ``var`` and ``uns``)."""
        path = Path(path)
        if path.suffix != ".h5ad":
            raise ValueError(f"{path}: predictions are written as AnnData; use a .h5ad name.")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.adata.write_h5ad(path)
        return path

    def __repr__(self) -> str:
        up = ", ".join(self.top_up["gene"].head(5)) or "-"
        down = ", ".join(self.top_down["gene"].head(5)) or "-"
        return (
            f"PerturbationPrediction({self.perturbation!r}, {self.adata.n_obs} cells, valid "
            f"gene fraction {self.valid_fraction:.2f}; up: {up}; down: {down})"
        )
