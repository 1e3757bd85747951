"""cell2text: expression profiles to cell sentences and back, the gene vocabulary and tokenizer.

Light names are imported at once; the encoder, decoder and tokenizer (numba, transformers) are
imported on first use, so ``import cellrlhf.cell2text`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from cellrlhf.cell2text.thread_budget import align_numba_threads

align_numba_threads()  # before any kernel module imports numba

from cellrlhf.cell2text.gene_names import GeneNameError  # noqa: E402
from cellrlhf.cell2text.markup import extract_cell, format_cell, format_perturbation  # noqa: E402
from cellrlhf.cell2text.vocab import GeneMapping, GeneVocab, gene_mapping  # noqa: E402

_LAZY = {
    "encode": "cellrlhf.cell2text.encoding",
    "check_expression": "cellrlhf.cell2text.expression_checks",
    "InvalidExpressionError": "cellrlhf.cell2text.expression_checks",
    "cell_keys": "cellrlhf.cell2text.ranking",
    "rank_expressed": "cellrlhf.cell2text.ranking",
    "RankedCells": "cellrlhf.cell2text.ranking",
    "iter_sentences": "cellrlhf.cell2text.stream",
    "write_sentences": "cellrlhf.cell2text.stream",
    "ExpressionDecoder": "cellrlhf.cell2text.decoder",
    "DecodeReport": "cellrlhf.cell2text.decode_report",
    "build_cell_tokenizer": "cellrlhf.cell2text.tokenizer",
    "add_gene_tokens": "cellrlhf.cell2text.tokenizer",
    "gene_token_init_pieces": "cellrlhf.cell2text.tokenizer",
    "genes_as_text_tokenizer": "cellrlhf.cell2text.tokenizer",
    "load_cell_tokenizer": "cellrlhf.cell2text.tokenizer",
}

__all__ = [
    "GeneNameError",
    "GeneMapping",
    "GeneVocab",
    "gene_mapping",
    "extract_cell",
    "format_cell",
    "format_perturbation",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cellrlhf.cell2text' has no attribute {name!r}")
