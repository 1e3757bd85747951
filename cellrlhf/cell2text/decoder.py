"""From cell sentences back to expression: Cell2Sentence's rank -> value model.

In a data set's cell sentences, the expression of the gene at 0-based position ``r`` is well
described by a line in ``log10(r + 1)`` (Cell2Sentence, Levine et al. 2023). The decoder fits that
line on the data set's expressed values, with the same ranking as :func:`encode`, and turns any
text (real sentences, or whatever a model generated) into a sparse cells x genes matrix::

    decoder = ExpressionDecoder.fit(adata)          # method="global", "per_gene", "neighbours"
    X_hat, report = decoder.decode(sentences)       # csr (n, len(vocab)), DecodeReport

Decoding rules (model output is malformed as a matter of course, so nothing here raises):

- Words are split on whitespace and matched to the vocabulary case-insensitively.
- Inside ``<cell> ... </cell>`` only the words between the markers are read
  (:func:`~cellrlhf.cell2text.markup.extract_cell`); without a marker the whole text is read.
- Unknown words are skipped and do NOT consume a rank position.
- A gene repeated later in the sentence is ignored (the first occurrence keeps its rank).
- At most ``max_genes`` distinct genes are decoded; later ones are counted as truncated.
- Value at rank ``r``: ``intercept[g] + slope[g] * log10(r + 1)``, clipped at 0.
- ``method="neighbours"``: those per-gene values plus the mean residual of the most similar
  training cells (:mod:`~cellrlhf.cell2text.neighbour_decoding`), clipped at 0.

Decoded values are on the scale of the expression the decoder was fitted on (``adata.X`` or the
``layer``), typically log1p-normalized counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numba
import numpy as np
import scipy.sparse as sp

from cellrlhf.cell2text.csr_rows import CsrRowBuilder
from cellrlhf.cell2text.decode_kernels import (
    GeneLookup,
    ascii_words,
    assemble_rows,
    decode_ascii,
    decode_ascii_parallel,
    decoding_model,
    gather_csr,
    layout_rooms,
    little_endian,
    words_buffer,
)
from cellrlhf.cell2text.decode_report import DecodeReport
from cellrlhf.cell2text.decoder_fit import DECODER_METHODS, fit_rank_value_lines
from cellrlhf.cell2text.decoder_fit import reference_cells as fit_reference_cells
from cellrlhf.cell2text.markup import CELL_START, extract_cell
from cellrlhf.cell2text.neighbour_decoding import NeighbourCells
from cellrlhf.cell2text.thread_budget import keep_torch_threads
from cellrlhf.cell2text.vocab import GeneVocab

__all__ = [
    "DECODER_FILENAME",
    "DECODER_METHODS",
    "ExpressionDecoder",
]

DECODER_FILENAME = "expression_decoder.json"
_FORMAT = "cellrlhf.expression_decoder"
_VERSION = 1
_DECODE_BATCH = 2048
_PARALLEL_BYTES = 1 << 23  # decode in parallel threads from 8 MB of text per batch


@dataclass(frozen=True)
class ExpressionDecoder:
    """Linear model of expression on ``log10(rank + 1)``, per gene or shared by all genes.

    Parameters
    ----------
    vocab
        The genes, in the column order of decoded matrices.
    intercept, slope
        One value per vocabulary gene (``method="global"`` repeats the shared line).
    params
        How the decoder was fitted: ``method``, ``r2``, ``layer``, ``n_cells``, ``n_values``,
        ``top_k``, ``seed``, ``value_scale``... (saved with the decoder).
    neighbours
        ``method="neighbours"`` only: the training cells whose residuals correct the lines.
    """

    vocab: GeneVocab
    intercept: np.ndarray
    slope: np.ndarray
    params: dict = field(default_factory=dict)
    neighbours: NeighbourCells | None = None

    def __post_init__(self) -> None:
        n = len(self.vocab)
        for name in ("intercept", "slope"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.ndim == 0:
                value = np.full(n, float(value))
            if value.shape != (n,) or not np.all(np.isfinite(value)):
                raise ValueError(
                    f"{name} must be {n} finite numbers (one per vocabulary gene); got shape "
                    f"{value.shape}."
                )
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        if (self.method == "neighbours") != (self.neighbours is not None):
            raise ValueError(
                "a decoder has reference cells exactly when its method is 'neighbours' "
                f"(method={self.method!r}, reference cells: {self.neighbours is not None})."
            )

    # ------------------------------------------------------------------ properties
    @property
    def method(self) -> str:
        return str(self.params.get("method", "global"))

    @property
    def r2(self) -> float:
        """In-sample R^2 of the fitted model on the expressed values (NaN when not fitted)."""
        return float(self.params.get("r2", float("nan")))

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(
        cls,
        adata,
        *,
        layer: str | None = None,
        gene_symbols: str | None = None,
        duplicates: Literal["error", "sum", "first"] = "error",
        top_k: int | None = None,
        seed: int = 0,
        method: Literal["global", "per_gene", "neighbours"] = "global",
        max_cells: int | None = None,
        random_state: int = 0,
        shrinkage: float = 10.0,
        n_neighbors: int = 20,
        reference_cells: int | None = 5000,
        progress: bool = False,
    ) -> ExpressionDecoder:
        """Fit the rank -> value line on a data set's expressed values.

        Parameters
        ----------
        adata
            Cells x genes, values on the scale decoded values should have (log1p-normalized
            counts, as in Cell2Sentence). Backed AnnData works (read in chunks).
        layer
            Use ``adata.layers[layer]`` instead of ``adata.X``.
        gene_symbols, duplicates
            As in :func:`~cellrlhf.cell2text.encoding.encode`; the vocabulary must be the one the
            sentences were written with.
        top_k, seed
            As in ``encode``: the ranking (ties broken by ``seed``) and the sentence length cap.
        method
            ``"global"``: one line for all genes (Cell2Sentence). ``"per_gene"``: one line per
            gene, shrunk towards the global line for genes with few observations.
            ``"neighbours"``: the per-gene lines plus the mean residual (measured minus line
            value) of the most similar reference cells
            (:mod:`~cellrlhf.cell2text.neighbour_decoding`): magnitudes a rank cannot carry.
        max_cells
            Fit on a random subset of at most this many cells (``random_state``).
        shrinkage
            ``per_gene`` only: weight of the global line, in pseudo-observations spread like the
            data set's ranks. A gene seen ``n`` times keeps about ``n / (n + shrinkage)`` of its
            own line; genes never expressed get the global line.
        n_neighbors, reference_cells
            ``neighbours`` only: each decoded sentence is corrected by the mean residual of its
            ``n_neighbors`` most similar cells among a random subset of at most
            ``reference_cells`` cells (``random_state``), saved with the decoder (about 20
            bytes per gene of each cell's sentence).
        progress
            Show a progress bar over chunks of cells.

        Returns
        -------
        The fitted decoder; ``decoder.r2`` is the in-sample R^2 of the chosen method and
        ``params`` holds ``r2_global`` and ``r2_per_gene`` for comparison.
        """
        # the cells are read and ranked as encode() ranks them, for the lines and the references
        ranking = dict(
            layer=layer, gene_symbols=gene_symbols, duplicates=duplicates, top_k=top_k, seed=seed
        )
        vocab, intercept, slope, params = fit_rank_value_lines(
            adata,
            **ranking,
            method=method,
            max_cells=max_cells,
            random_state=random_state,
            shrinkage=shrinkage,
            progress=progress,
        )
        neighbours = None
        if method == "neighbours":
            neighbours = fit_reference_cells(
                adata,
                **ranking,
                max_cells=reference_cells,
                random_state=random_state,
                n_neighbors=n_neighbors,
            )
            params.update(n_neighbors=int(n_neighbors), reference_cells=neighbours.n_cells)
        return cls(vocab, intercept, slope, params, neighbours)

    # ------------------------------------------------------------------ decode
    def decode(
        self,
        sentences: Iterable[object],
        *,
        max_genes: int | None = None,
        batch_size: int = _DECODE_BATCH,
        progress: bool = False,
    ) -> tuple[sp.csr_matrix, DecodeReport]:
        """Expression matrix of cell sentences (or raw model output).

        Parameters
        ----------
        sentences
            One text per cell: a list, array or pandas Series of strings. ``None``, numbers and
            other non-text items decode to all-zero rows (counted in ``report.not_text``);
            ``bytes`` are read as UTF-8.
        max_genes
            Decode at most this many distinct genes per sentence (default: all).
        batch_size
            Sentences processed at once (bounds memory on large inputs).
        progress
            Show a progress bar over batches.

        Returns
        -------
        matrix
            ``scipy.sparse.csr_matrix`` of shape ``(n_sentences, len(vocab))``, float32, columns in
            vocabulary order, sorted indices, no stored zeros.
        report
            Per-sentence counts of valid, unknown, duplicated and truncated words.
        """
        from tqdm.auto import tqdm

        if isinstance(sentences, (str, bytes)):
            raise TypeError(
                "decode() takes a list of sentences, one per cell; got a single string. "
                "Wrap it: decoder.decode([sentence])."
            )
        items = list(sentences)
        cap = len(self.vocab) if max_genes is None else int(max_genes)
        if cap < 0:
            raise ValueError(f"max_genes={max_genes} must be >= 0.")
        cap = min(cap, len(self.vocab))
        model = decoding_model(self.intercept, self.slope, cap)
        rows = CsrRowBuilder(len(self.vocab), len(items))
        scratch = _DecodeScratch()
        reports: list[DecodeReport] = []
        batch_size = max(int(batch_size), 1)
        batches = range(0, len(items), batch_size)
        for start in tqdm(batches, desc="decode", unit="batch", disable=not progress):
            batch = items[start : start + batch_size]
            reports.append(self._decode_batch(batch, model, rows, scratch))
        if not reports:
            return sp.csr_matrix((0, len(self.vocab)), dtype=np.float32), DecodeReport.empty_report(
                0
            )
        matrix = rows.to_csr()
        if self.neighbours is not None:
            matrix = self.neighbours.correct(matrix, self.intercept, self.slope)
        return matrix, DecodeReport.concatenate(reports)

    def _decode_batch(self, batch, model, rows: CsrRowBuilder, scratch: _DecodeScratch):
        """Decode ``batch`` onto ``rows``; returns its report."""
        n = len(batch)
        texts, marked, closed, not_text = _prepare_texts(batch)
        is_ascii = np.fromiter((t.isascii() for t in texts), dtype=bool, count=n)
        if not little_endian():
            is_ascii[:] = False
        if is_ascii.all():  # the usual case: rooms straight into the output
            room_start, counts = self._decode_ascii(texts, model, scratch)
            rows.append_rooms(room_start, scratch.cols, scratch.vals, counts[5])
        else:
            parts, order = [], []
            if is_ascii.any():
                order.append(np.flatnonzero(is_ascii))
                room_start, counts = self._decode_ascii(
                    [texts[i] for i in order[-1]], model, scratch
                )
                parts.append(
                    (_rooms_to_csr(room_start, scratch, counts, len(self.vocab)), counts[:5])
                )
            order.append(np.flatnonzero(~is_ascii))
            parts.append(self._decode_unicode([texts[i] for i in order[-1]], model))
            if len(parts) == 1:
                matrix, counts = parts[0]
            else:
                rank = np.argsort(np.concatenate(order), kind="stable")
                matrix = sp.vstack([p[0] for p in parts], format="csr")[rank]
                counts = np.concatenate([p[1] for p in parts], axis=1)[:, rank]
            matrix.has_sorted_indices = True  # every part's rows are sorted
            rows.append_csr(matrix)
        n_words, n_valid, n_unknown, n_dup, n_trunc = counts[:5]
        return DecodeReport(
            n_words=n_words,
            n_valid=n_valid,
            n_unknown=n_unknown,
            n_duplicates=n_dup,
            n_truncated=n_trunc,
            empty=n_words == 0,
            marked=marked,
            closed=closed,
            not_text=not_text,
        )

    def _decode_ascii(self, texts: list[str], model: tuple, scratch: _DecodeScratch):
        """Decode ASCII ``texts`` into ``scratch``'s rooms; returns room starts and counts."""
        lookup = self._lookup()
        bounds = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)), out=bounds[1:])
        words = ascii_words(texts, scratch.words)
        scratch.words = words_buffer(words)
        room_start, longest = layout_rooms(bounds, model[0])
        scratch.reserve_rooms(int(room_start[-1]))
        threads = numba.get_num_threads()
        kernel = (
            decode_ascii_parallel if threads > 1 and bounds[-1] >= _PARALLEL_BYTES else decode_ascii
        )
        with keep_torch_threads():
            counts = kernel(
                words,
                bounds,
                lookup.slots,
                lookup.bits,
                lookup.key_bytes,
                lookup.key_offsets,
                len(self.vocab),
                model,
                room_start,
                longest,
                scratch.cols,
                scratch.vals,
            )
        return room_start, counts

    def _decode_unicode(self, texts: list[str], model: tuple):
        words = [t.upper().split() for t in texts]
        n_words = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        ends = np.cumsum(n_words)
        word_genes = self.vocab.indices(w for ws in words for w in ws).astype(np.int32)
        indptr, cols, vals, counts = assemble_rows(
            word_genes, ends - n_words, ends, len(self.vocab), model
        )
        matrix = sp.csr_matrix((vals, cols, indptr), shape=(len(texts), len(self.vocab)))
        return matrix, counts

    def _lookup(self) -> GeneLookup:
        cached = self.__dict__.get("_gene_lookup")
        if cached is None:
            cached = GeneLookup.build(list(self.vocab.genes))
            object.__setattr__(self, "_gene_lookup", cached)
        return cached

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        shared = self.method == "global" and np.all(self.intercept == self.intercept[:1])
        shared = shared and np.all(self.slope == self.slope[:1]) and len(self.vocab) > 0

        def values(a: np.ndarray):
            return float(a[0]) if shared else [float(v) for v in a]

        return {
            "format": _FORMAT,
            "version": _VERSION,
            "method": self.method,
            "genes": list(self.vocab.genes),
            "vocab_params": self.vocab.params,
            "intercept": values(self.intercept),
            "slope": values(self.slope),
            "params": self.params,
            **({"neighbours": self.neighbours.to_dict()} if self.neighbours is not None else {}),
        }

    def save(self, path: str | Path) -> Path:
        """Write JSON to ``path`` (a file, or a directory receiving ``expression_decoder.json``)."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            path = path / DECODER_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ExpressionDecoder:
        """Read a decoder written by :meth:`save` (file or directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / DECODER_FILENAME
        if not path.exists():
            raise FileNotFoundError(
                f"no expression decoder at {path}; expected {DECODER_FILENAME}."
            )
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != _FORMAT:
            raise ValueError(
                f"{path} is not a cellrlhf expression decoder (format={payload.get('format')!r})."
            )
        if payload.get("version", 0) > _VERSION:
            raise ValueError(
                f"{path} was written by a newer cellrlhf (decoder format version "
                f"{payload['version']} > {_VERSION}); upgrade cellrlhf to read it."
            )
        vocab = GeneVocab(tuple(payload["genes"]), params=payload.get("vocab_params", {}))
        params = dict(payload.get("params", {}))
        params.setdefault("method", payload.get("method", "global"))
        neighbours = payload.get("neighbours")
        if neighbours is not None:
            neighbours = NeighbourCells.from_dict(neighbours)
        return cls(vocab, payload["intercept"], payload["slope"], params, neighbours)


# ---------------------------------------------------------------------- decode helpers
class _DecodeScratch:
    """Buffers one ``decode`` call reuses across its batches (text words, rooms)."""

    def __init__(self) -> None:
        self.words: np.ndarray | None = None
        self.cols = np.empty(0, dtype=np.int32)
        self.vals = np.empty(0, dtype=np.float32)

    def reserve_rooms(self, size: int) -> None:
        if size > len(self.cols):
            size += size // 4
            self.cols = np.empty(size, dtype=np.int32)
            self.vals = np.empty(size, dtype=np.float32)


def _rooms_to_csr(room_start, scratch: _DecodeScratch, counts, n_cols: int) -> sp.csr_matrix:
    """The rows held in ``scratch``'s rooms as their own CSR matrix."""
    indptr, cols, vals, _ = gather_csr(room_start, scratch.cols, scratch.vals, counts)
    return sp.csr_matrix((vals, cols, indptr), shape=(len(room_start) - 1, n_cols))


def _prepare_texts(batch: list[object]):
    """Sentence text of each item (inside the ``<cell>`` markers when present) and flags."""
    n = len(batch)
    texts: list[str] = [""] * n
    marked = np.zeros(n, dtype=bool)
    closed = np.zeros(n, dtype=bool)
    not_text = np.zeros(n, dtype=bool)
    for i, item in enumerate(batch):
        if isinstance(item, bytes):
            item = item.decode("utf-8", errors="replace")
        if not isinstance(item, str):
            not_text[i] = True
            continue
        if "<" in item and CELL_START in item:
            extracted = extract_cell(item)
            texts[i] = extracted.sentence
            marked[i] = True
            closed[i] = extracted.closed
        else:
            texts[i] = item
    return texts, marked, closed, not_text
