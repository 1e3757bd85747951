"""The gene vocabulary shared by the language model, the data builders and the reward."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp

from cellrlhf.cell2text.gene_names import (
    DUPLICATE_POLICIES,
    GeneNameError,
    clean_gene_names,
    find_case_collisions,
    looks_like_ensembl,
)

__all__ = ["GeneVocab", "GeneMapping", "VOCAB_FILENAME", "gene_mapping"]

logger = logging.getLogger(__name__)

VOCAB_FILENAME = "gene_vocab.json"
_FORMAT = "cellrlhf.gene_vocab"
_VERSION = 1
_WHITESPACE = re.compile(r"\s")
_NAN_WORDS = frozenset({"nan", "none"})


@dataclass(frozen=True)
class GeneMapping:
    """How the columns of an AnnData map onto a :class:`GeneVocab`.

    Attributes
    ----------
    column_to_gene
        For each ``var`` column, the index of its gene in the vocabulary, or ``-1`` when the
        column is dropped (``duplicates="first"``).
    duplicates
        The policy that produced the mapping.
    """

    column_to_gene: np.ndarray
    n_genes: int
    duplicates: str = "error"

    @property
    def is_identity(self) -> bool:
        """True when column ``i`` is gene ``i`` for every column (nothing merged or dropped)."""
        c = self.column_to_gene
        return len(c) == self.n_genes and bool(np.array_equal(c, np.arange(self.n_genes)))

    def aggregation_matrix(self) -> sp.csr_matrix:
        """Sparse ``(n_columns, n_genes)`` 0/1 matrix: ``X @ A`` gives the vocabulary's genes.

        With ``duplicates="sum"`` columns sharing a gene are summed; dropped columns vanish.
        """
        keep = np.flatnonzero(self.column_to_gene >= 0)
        data = np.ones(len(keep), dtype=np.float32)
        return sp.csr_matrix(
            (data, (keep, self.column_to_gene[keep])),
            shape=(len(self.column_to_gene), self.n_genes),
        )

    def apply(self, X):
        """Map an expression block (cells x columns) onto the vocabulary's genes."""
        if self.is_identity:
            return X
        A = self.aggregation_matrix()
        if sp.issparse(X):
            return sp.csr_matrix(X @ A)
        return np.asarray(X @ A)


@dataclass(frozen=True)
class GeneVocab:
    """An ordered, case-insensitively unique list of gene symbols.

    Sentences use the symbols exactly as stored here; parsing (model output) is
    case-insensitive, so ``cd3e`` in a generated sentence is read as ``CD3E``.

    Parameters
    ----------
    genes
        Gene symbols in vocabulary order. Duplicates, names that collide once upper-cased, empty
        names and names with whitespace raise :class:`GeneNameError`.
    """

    genes: tuple[str, ...]
    params: dict = field(default_factory=dict, compare=False)
    _lookup: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        genes = tuple(_clean_names(self.genes, source="the gene list"))
        upper = [g.upper() for g in genes]
        if len(set(upper)) != len(upper):
            collisions = find_case_collisions(genes)
            raise GeneNameError(_collision_message(genes, collisions, "the gene list"))
        object.__setattr__(self, "genes", genes)
        object.__setattr__(self, "_lookup", dict(zip(upper, range(len(upper)), strict=True)))

    @classmethod
    def _from_checked(cls, genes: list[str], upper: list[str], params: dict) -> GeneVocab:
        """A vocabulary of names already cleaned and checked unique (``upper``: upper-cased)."""
        vocab = object.__new__(cls)
        object.__setattr__(vocab, "genes", tuple(genes))
        object.__setattr__(vocab, "params", params)
        object.__setattr__(vocab, "_lookup", dict(zip(upper, range(len(upper)), strict=True)))
        return vocab

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_adata(
        cls,
        adata,
        *,
        gene_symbols: str | None = None,
        duplicates: Literal["error", "sum", "first"] = "error",
    ) -> GeneVocab:
        """Build the vocabulary of an AnnData's genes (see :meth:`from_names_with_mapping`)."""
        names, source = _names_of(adata, gene_symbols)
        vocab, _ = cls.from_names_with_mapping(names, source, duplicates=duplicates)
        return vocab

    @classmethod
    def from_names_with_mapping(
        cls,
        names: Sequence[object],
        source: str = "var_names",
        *,
        duplicates: Literal["error", "sum", "first"] = "error",
        ensembl_hint: bool = True,
    ) -> tuple[GeneVocab, GeneMapping]:
        """Vocabulary and column mapping for a list of per-column gene names.

        Parameters
        ----------
        names
            One name per expression column.
        source
            Where the names come from, for error messages.
        duplicates
            What to do with names that repeat, exactly or once upper-cased: ``"error"`` (default)
            lists them; ``"sum"`` adds their columns into one gene (the first spelling is kept);
            ``"first"`` keeps the first column and drops the others.
        ensembl_hint
            Raise when most names look like Ensembl IDs, pointing to ``gene_symbols=``.
        """
        if duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates={duplicates!r}; choose one of {DUPLICATE_POLICIES}.")
        cleaned = _clean_names(names, source=source)
        if (
            ensembl_hint
            and source == "var_names"
            and 2 * sum(name.startswith("ENS") for name in cleaned) > len(cleaned)
            and looks_like_ensembl(cleaned) > 0.5
        ):
            raise GeneNameError(
                f"{source} look like Ensembl IDs (e.g. {cleaned[0]!r}) and no symbol column was "
                "given. Cell sentences are made of gene symbols: pass gene_symbols='<var column "
                "with symbols>' (for example gene_symbols='gene_symbol' or 'feature_name')."
            )
        upper = [name.upper() for name in cleaned]
        collisions = find_case_collisions(cleaned) if len(set(upper)) != len(upper) else {}
        if collisions and duplicates == "error":
            raise GeneNameError(_collision_message(cleaned, collisions, source))
        params = {"source": source, "duplicates": duplicates}
        if not collisions:
            column_to_gene = np.arange(len(cleaned), dtype=np.int64)
            vocab = cls._from_checked(cleaned, upper, params)
            return vocab, GeneMapping(column_to_gene, len(cleaned), duplicates)
        first_of: dict[str, int] = {}
        genes: list[str] = []
        column_to_gene = np.empty(len(cleaned), dtype=np.int64)
        for col, (name, key) in enumerate(zip(cleaned, upper, strict=True)):
            if key in first_of:
                column_to_gene[col] = first_of[key] if duplicates == "sum" else -1
            else:
                first_of[key] = len(genes)
                column_to_gene[col] = len(genes)
                genes.append(name)
        if collisions:
            logger.warning(
                "%d gene symbol(s) repeat (case-insensitively) in %s; duplicates=%r applied.",
                len(collisions),
                source,
                duplicates,
            )
        vocab = cls._from_checked(genes, [name.upper() for name in genes], params)
        return vocab, GeneMapping(column_to_gene, len(genes), duplicates)

    # ----------------------------------------------------------------- lookup
    def __len__(self) -> int:
        return len(self.genes)

    def __iter__(self) -> Iterator[str]:
        return iter(self.genes)

    def __contains__(self, gene: object) -> bool:
        return isinstance(gene, str) and gene.upper() in self._lookup

    def index(self, gene: str) -> int:
        """Position of ``gene`` (case-insensitive). Raises ``KeyError`` naming the gene."""
        try:
            return self._lookup[gene.upper()]
        except KeyError:
            raise KeyError(f"gene {gene!r} is not in the vocabulary ({len(self)} genes)") from None

    def indices(self, words: Iterable[str]) -> np.ndarray:
        """Positions of ``words`` (case-insensitive); ``-1`` for words that are not genes."""
        get = self._lookup.get
        return np.fromiter((get(w.upper(), -1) for w in words), dtype=np.int64)

    def canonical(self, gene: str) -> str:
        """The stored spelling of ``gene`` (``'cd3e'`` -> ``'CD3E'``)."""
        return self.genes[self.index(gene)]

    # ----------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "genes": list(self.genes),
            "params": self.params,
        }

    def save(self, path: str | Path) -> Path:
        """Write JSON to ``path`` (a file, or a directory that receives ``gene_vocab.json``)."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            path = path / VOCAB_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> GeneVocab:
        """Read a vocabulary written by :meth:`save` (file or directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_FILENAME
        if not path.exists():
            raise FileNotFoundError(f"no gene vocabulary at {path}; expected {VOCAB_FILENAME}.")
        payload = json.loads(path.read_text())
        if payload.get("format") != _FORMAT:
            raise ValueError(
                f"{path} is not a cellrlhf gene vocabulary (format={payload.get('format')!r})."
            )
        return cls(tuple(payload["genes"]), params=payload.get("params", {}))


def _names_of(adata, gene_symbols: str | None) -> tuple[list[object], str]:
    if gene_symbols is None:
        return list(adata.var_names), "var_names"
    if gene_symbols not in adata.var.columns:
        raise KeyError(
            f"gene_symbols={gene_symbols!r} is not a column of adata.var; available columns: "
            f"{list(adata.var.columns)}."
        )
    return list(adata.var[gene_symbols]), f"var[{gene_symbols!r}]"


def _clean_names(values: Sequence[object], *, source: str) -> list[str]:
    """:func:`clean_gene_names`, with a fast path for the usual case.

    Names that are all non-empty ``str`` without any whitespace (``re`` ``\\s`` and
    ``str.isspace`` are the same set) and not ``"nan"``/``"none"`` are returned as they are,
    which is what :func:`clean_gene_names` returns for them; anything else goes through it
    (stripping, or an error naming the problem).
    """
    values = list(values)
    if not all(type(value) is str for value in values) and all(
        isinstance(value, str) for value in values
    ):
        values = [str(value) for value in values]  # numpy.str_ and other str subclasses
    if (
        all(type(value) is str for value in values)
        and all(values)
        and _WHITESPACE.search("".join(values)) is None
        and _NAN_WORDS.isdisjoint(value.lower() for value in values if len(value) <= 4)
    ):
        return values
    return clean_gene_names(values, source=source)


def gene_mapping(adata, *, gene_symbols: str | None = None, duplicates: str = "error"):
    """Vocabulary and column mapping for ``adata`` (used by ``encode`` and the decoder fit)."""
    names, source = _names_of(adata, gene_symbols)
    return GeneVocab.from_names_with_mapping(names, source, duplicates=duplicates)


def _collision_message(names: Sequence[str], collisions: dict[str, list[int]], source: str) -> str:
    shown = [" / ".join(names[i] for i in idx) for idx in list(collisions.values())[:10]]
    more = f" and {len(collisions) - 10} more" if len(collisions) > 10 else ""
    return (
        f"{len(collisions)} gene symbol(s) in {source} repeat or collide once upper-cased "
        f"(language-model words are case-insensitive): {shown}{more}. Pass duplicates='sum' to "
        "add their counts, duplicates='first' to keep the first column, or rename them."
    )
