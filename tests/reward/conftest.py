"""Builders of small synthetic perturbation data for the reward-stage tests."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellrlhf.cell2text.decoder import ExpressionDecoder
from cellrlhf.cell2text.vocab import GeneVocab

PERTURBATIONS = ("control", "G1", "KLF1", "CEBPA", "KLF1+CEBPA", "MAPK1")


def make_perturbation_adata(
    *,
    seed: int = 0,
    n_genes: int = 30,
    perturbations=PERTURBATIONS,
    n_cells=40,
    effect: float = 0.5,
    noise: float = 0.6,
    dropout: float = 0.3,
    effect_seed: int = 100,
    prefix: str = "c",
) -> ad.AnnData:
    """Log-normalized-looking cells: a baseline profile plus a fixed effect per perturbation.

    ``effect_seed`` fixes the true effects, ``seed`` the cell noise, so two calls with
    different ``seed`` are two samples of the same biology. ``n_cells`` may be an int or a
    per-perturbation sequence. Gene names are ``G0..``, so the perturbation ``G1`` targets a
    measured gene.
    """
    rng = np.random.default_rng(seed)
    genes = [f"G{j}" for j in range(n_genes)]
    base = np.log1p(np.arange(n_genes) % 7 + 1.0)
    sizes = [n_cells] * len(perturbations) if np.isscalar(n_cells) else list(n_cells)
    blocks, labels = [], []
    for i, (pert, n) in enumerate(zip(perturbations, sizes, strict=True)):
        mu = base.copy()
        if pert != "control":
            mu = mu + effect * np.random.default_rng(effect_seed + i).normal(0, 1, n_genes)
        X = np.clip(mu + rng.normal(0, noise, (n, n_genes)), 0, None)
        X[rng.random((n, n_genes)) < dropout] = 0
        blocks.append(X)
        labels += [pert] * n
    obs = pd.DataFrame(
        {"perturbation": labels}, index=[f"{prefix}{seed}_{i}" for i in range(len(labels))]
    )
    return ad.AnnData(np.vstack(blocks).astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture
def perturbation_adata():
    """Factory: :func:`make_perturbation_adata`."""
    return make_perturbation_adata


@pytest.fixture
def line_decoder():
    """A decoder of 12 genes ``GENE0..GENE11``: value at rank r is ``3 - 2 log10(r + 1)``."""
    genes = tuple(f"GENE{i}" for i in range(12))
    return ExpressionDecoder(GeneVocab(genes), 3.0, -2.0, {"method": "global"})
