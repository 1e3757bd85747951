"""Validation of gene names: what Cell2Sentence gets silently wrong.

Gene symbols become words of the language model. Two genes that map to the same word, a gene with
no name, or an Ensembl ID standing where a symbol should be all corrupt every sentence, so they are
caught here with an error that says what to do.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "DUPLICATE_POLICIES",
    "GeneNameError",
    "looks_like_ensembl",
    "clean_gene_names",
    "find_case_collisions",
]

DUPLICATE_POLICIES = ("error", "sum", "first")

_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*[GTP]\d{6,}(\.\d+)?$")


class GeneNameError(ValueError):
    """Gene names that cannot be turned into an unambiguous vocabulary."""


def looks_like_ensembl(names: Sequence[str]) -> float:
    """Fraction of ``names`` that look like Ensembl gene/transcript IDs (``ENSG00000141510``)."""
    names = list(names)
    if not names:
        return 0.0
    return sum(bool(_ENSEMBL_RE.match(str(n))) for n in names) / len(names)


def clean_gene_names(values: Sequence[object], *, source: str) -> list[str]:
    """Strip whitespace and reject empty, NaN or whitespace-containing names.

    Parameters
    ----------
    values
        Raw names (``adata.var_names`` or a ``var`` column).
    source
        Where the names come from, used in error messages (``"var_names"``, ``"var['symbol']"``).
    """
    out: list[str] = []
    bad_empty: list[int] = []
    bad_space: list[str] = []
    for i, value in enumerate(values):
        if value is None or (isinstance(value, float) and np.isnan(value)) or pd.isna(value):
            bad_empty.append(i)
            continue
        name = str(value).strip()
        if not name or name.lower() in {"nan", "none"}:
            bad_empty.append(i)
            continue
        if any(ch.isspace() for ch in name):
            bad_space.append(name)
            continue
        out.append(name)
    if bad_empty:
        raise GeneNameError(
            f"{len(bad_empty)} gene name(s) in {source} are empty or NaN (positions "
            f"{bad_empty[:10]}{'...' if len(bad_empty) > 10 else ''}). Give every gene a symbol, "
            "or drop those genes first, e.g. adata = adata[:, adata.var[col].notna()]."
        )
    if bad_space:
        raise GeneNameError(
            f"{len(bad_space)} gene name(s) in {source} contain whitespace, which would split one "
            f"gene into several words: {bad_space[:10]}. Rename them (e.g. replace spaces by '_')."
        )
    return out


def find_case_collisions(names: Sequence[str]) -> dict[str, list[int]]:
    """Positions of names that collide once upper-cased (exact duplicates included).

    Returns a mapping from the upper-cased name to the list of positions sharing it, only for
    names that occur more than once.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(names):
        groups[name.upper()].append(i)
    return {key: idx for key, idx in groups.items() if len(idx) > 1}
