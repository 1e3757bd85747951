"""Turn the ways a user can give a cell into cell sentences in the model's vocabulary.

A cell can be

- rows of an :class:`~anndata.AnnData` (expression in ``X`` or a ``layer``): encoded with
  :func:`cellrlhf.cell2text.encoding.encode`, keeping the model's genes only;
- a mapping (or :class:`pandas.Series`) of gene -> expression value: one cell;
- a cell sentence: a string of gene symbols, highest expressed first (``"CD3E CD8A ..."`` or
  ``"<cell> CD3E CD8A ... </cell>"``), or a list of symbols in that order.

A list of mappings or sentences is several cells. Genes of an AnnData that the model has no word
for are dropped (the overlap is logged, and no overlap at all is an error); in a mapping or a
sentence, an unknown gene is an error naming it, since the user typed it on purpose.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cellrlhf.cell2text.markup import CELL_START, extract_cell
from cellrlhf.cell2text.vocab import GeneVocab

__all__ = ["UnknownGenesError", "EncodedCells", "encode_cells", "is_single_cell"]

logger = logging.getLogger(__name__)


class UnknownGenesError(KeyError):
    """Genes given by the user that are not in the model's vocabulary."""

    def __init__(self, genes: Sequence[str], vocab: GeneVocab):
        self.genes = list(genes)
        hints = []
        for gene in self.genes[:5]:
            close = difflib.get_close_matches(gene.upper(), [g.upper() for g in vocab.genes], n=3)
            if close:
                hints.append(f"{gene} -> {', '.join(vocab.canonical(c) for c in close)}?")
        shown = ", ".join(self.genes[:20]) + (" ..." if len(self.genes) > 20 else "")
        message = (
            f"{len(self.genes)} gene(s) are not in the model's vocabulary of {len(vocab)} genes: "
            f"{shown}."
        )
        if hints:
            message += f" Did you mean: {'; '.join(hints)}"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


@dataclass(frozen=True)
class EncodedCells:
    """Cell sentences ready for a prompt.

    Attributes
    ----------
    ids
        One name per cell (AnnData ``obs_names``, or ``cell_0``, ``cell_1``... for other inputs).
    sentences
        Space-joined gene symbols in the model's spelling, highest expressed first.
    gene_overlap
        For AnnData input: fraction of the data's genes the model knows (``None`` otherwise).
    """

    ids: list[str]
    sentences: list[str]
    gene_overlap: float | None = None
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sentences)


def is_single_cell(cells) -> bool:
    """Whether ``cells`` describes exactly one cell (a 1-row AnnData, a mapping, a sentence)."""
    if _is_anndata(cells):
        return cells.n_obs == 1
    if isinstance(cells, (str, Mapping)) or _is_series(cells):
        return True
    return _is_gene_list(cells)


def encode_cells(
    cells,
    vocab: GeneVocab,
    *,
    layer: str | None = None,
    gene_symbols: str | None = None,
    duplicates: str = "error",
    top_k: int | None = None,
    seed: int = 0,
) -> EncodedCells:
    """Cell sentences of ``cells`` in the vocabulary ``vocab`` (see the module docstring).

    Parameters
    ----------
    cells
        AnnData rows, a gene -> value mapping, a sentence, or a list of mappings / sentences.
    vocab
        The model's gene vocabulary.
    layer, gene_symbols, duplicates
        For AnnData input, as in :func:`~cellrlhf.cell2text.encoding.encode`.
    top_k
        Keep the ``top_k`` highest expressed genes (the length the model was trained with).
    seed
        Tie-breaking seed of the ranking (the one the training data used).
    """
    if _is_anndata(cells):
        return _encode_adata(cells, vocab, layer, gene_symbols, duplicates, top_k, seed)
    if layer is not None:
        raise ValueError("layer= only applies to AnnData input.")
    items = [cells] if is_single_cell(cells) else list(cells)
    if not items:
        raise ValueError("no cells given.")
    ids, sentences = [], []
    for i, item in enumerate(items):
        if isinstance(item, str) or _is_gene_list(item):
            sentence = _sentence_from_words(item, vocab)
        elif isinstance(item, Mapping) or _is_series(item):
            sentence = _sentence_from_mapping(item, vocab, f"cell_{i}", top_k, seed)
        else:
            raise TypeError(
                f"cannot read a cell from {type(item).__name__}: give AnnData rows, a mapping of "
                "gene -> value, or a cell sentence (str)."
            )
        words = sentence.split()
        ids.append(f"cell_{i}")
        sentences.append(" ".join(words[:top_k] if top_k else words))
    return EncodedCells(ids=ids, sentences=sentences, params={"top_k": top_k, "seed": seed})


# ---------------------------------------------------------------------------- helpers
def _is_anndata(obj) -> bool:
    return type(obj).__name__ in {"AnnData", "AnnDataView"} or hasattr(obj, "obs_names")


def _is_series(obj) -> bool:
    return type(obj).__name__ == "Series" and hasattr(obj, "index")


def _is_gene_list(obj) -> bool:
    return (
        isinstance(obj, (list, tuple))
        and len(obj) > 0
        and all(isinstance(w, str) for w in obj)
        and not any(" " in w.strip() for w in obj)
    )


def _sentence_from_words(item, vocab: GeneVocab) -> str:
    if isinstance(item, str):
        text = extract_cell(item).sentence if CELL_START in item else " ".join(item.split())
        words = text.split()
    else:
        words = [w.strip() for w in item]
    if not words:
        raise ValueError("the cell sentence is empty: give at least one gene.")
    idx = vocab.indices(words)
    unknown = [w for w, i in zip(words, idx, strict=True) if i < 0]
    if unknown:
        raise UnknownGenesError(list(dict.fromkeys(unknown)), vocab)
    seen, repeated = set(), []
    for w, i in zip(words, idx, strict=True):
        if i in seen:
            repeated.append(w)
        seen.add(i)
    if repeated:
        raise ValueError(
            f"gene(s) repeated in the cell sentence: {', '.join(dict.fromkeys(repeated))}. A cell "
            "sentence ranks each gene once, highest expressed first."
        )
    return " ".join(vocab.genes[i] for i in idx)


def _sentence_from_mapping(item, vocab: GeneVocab, cell_id: str, top_k, seed) -> str:
    import anndata as ad
    import pandas as pd

    values = pd.Series(item, dtype="float64") if not _is_series(item) else item.astype("float64")
    if values.empty:
        raise ValueError("the gene -> value mapping is empty.")
    names = [str(g) for g in values.index]
    unknown = [g for g, i in zip(names, vocab.indices(names), strict=True) if i < 0]
    if unknown:
        raise UnknownGenesError(unknown, vocab)
    bad = values[~np.isfinite(values.to_numpy()) | (values.to_numpy() < 0)]
    if len(bad):
        raise ValueError(
            f"expression values must be finite and >= 0; got {dict(bad.head(5))} (genes "
            f"{list(bad.index[:5])})."
        )
    one = ad.AnnData(
        X=values.to_numpy(dtype=np.float32)[None, :],
        obs=pd.DataFrame(index=[cell_id]),
        var=pd.DataFrame(index=[vocab.canonical(g) for g in names]),
    )
    return _run_encode(one, None, None, "error", top_k, seed)[0]


def _encode_adata(adata, vocab, layer, gene_symbols, duplicates, top_k, seed) -> EncodedCells:
    from cellrlhf.cell2text.vocab import gene_mapping

    if adata.n_obs == 0:
        raise ValueError("the AnnData has no cells.")
    data_vocab, mapping = gene_mapping(adata, gene_symbols=gene_symbols, duplicates=duplicates)
    in_model = vocab.indices(data_vocab.genes) >= 0
    n_known = int(in_model.sum())
    if n_known == 0:
        source = f"var[{gene_symbols!r}]" if gene_symbols else "var_names"
        raise ValueError(
            f"none of the data's {len(data_vocab)} genes ({source}, e.g. "
            f"{list(data_vocab.genes[:3])}) are in the model's vocabulary ({len(vocab)} genes, "
            f"e.g. {list(vocab.genes[:3])}). If the names are Ensembl IDs or another species' "
            "symbols, pass gene_symbols='<var column with matching symbols>'."
        )
    overlap = n_known / len(data_vocab)
    if overlap < 0.5:
        logger.warning(
            "only %d of the data's %d genes (%.0f%%) are in the model's vocabulary; the others "
            "are left out of the cell sentences.",
            n_known,
            len(data_vocab),
            100 * overlap,
        )
    else:
        logger.info("%d of %d genes are in the model's vocabulary.", n_known, len(data_vocab))
    # columns of genes the model knows; duplicates resolved by `encode` with the same policy
    keep_col = in_model[np.maximum(mapping.column_to_gene, 0)] & (mapping.column_to_gene >= 0)
    sub = adata[:, np.flatnonzero(keep_col)]
    sentences = _run_encode(sub, layer, gene_symbols, duplicates, top_k, seed)
    canonical = [" ".join(vocab.canonical(w) for w in s.split()) for s in sentences]
    return EncodedCells(
        ids=[str(i) for i in adata.obs_names],
        sentences=canonical,
        gene_overlap=overlap,
        params={"layer": layer, "top_k": top_k, "seed": seed, "n_genes_known": n_known},
    )


def _run_encode(adata, layer, gene_symbols, duplicates, top_k, seed) -> list[str]:
    from cellrlhf.cell2text.encoding import encode

    encoded = encode(
        adata,
        layer=layer,
        top_k=top_k,
        gene_symbols=gene_symbols,
        duplicates=duplicates,
        key_added="cell_sentence",
        seed=seed,
        copy=True,
    )
    return [str(s) for s in encoded.obs["cell_sentence"]]
