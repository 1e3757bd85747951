"""From cell sentences back to expression: Cell2Sentence's rank -> value model.

In a data set's cell sentences, the expression of the gene at 0-based position ``r`` is well
described by a line in ``log10(r + 1)`` (Cell2Sentence, Levine et al. 2023). The decoder fits that
line on the data set's expressed values, with the same ranking as :func:`encode`, and turns any
text (real sentences, or whatever a model generated) into a sparse cells x genes matrix::

    decoder = ExpressionDecoder.fit(adata)          # method="global" or "per_gene"
    X_hat, report = decoder.decode(sentences)       # csr (n, len(vocab)), DecodeReport

Decoding rules (model output is malformed as a matter of course, so nothing here raises):

- Words are split on whitespace and matched to the vocabulary case-insensitively.
- Inside ``<cell> ... </cell>`` only the words between the markers are read
  (:func:`~cellrlhf.cell2text.markup.extract_cell`); without a marker the whole text is read.
- Unknown words are skipped and do NOT consume a rank position.
- A gene repeated later in the sentence is ignored (the first occurrence keeps its rank).
- At most ``max_genes`` distinct genes are decoded; later ones are counted as truncated.
- Value at rank ``r``: ``intercept[g] + slope[g] * log10(r + 1)``, clipped at 0.

Decoded values are on the scale of the expression the decoder was fitted on (``adata.X`` or the
``layer``), typically log1p-normalized counts.
"""

from __future__ import annotations

import json
import logging
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
from cellrlhf.cell2text.markup import CELL_START, extract_cell
from cellrlhf.cell2text.thread_budget import keep_torch_threads
from cellrlhf.cell2text.vocab import GeneVocab, gene_mapping

__all__ = [
    "DECODER_FILENAME",
    "DECODER_METHODS",
    "ExpressionDecoder",
]

logger = logging.getLogger(__name__)

DECODER_FILENAME = "expression_decoder.json"
DECODER_METHODS = ("global", "per_gene")
_FORMAT = "cellrlhf.expression_decoder"
_VERSION = 1
_FIT_CHUNK = 4096
_DECODE_BATCH = 2048
_PARALLEL_BYTES = 1 << 23  # decode in parallel threads from 8 MB of text per batch
# per-gene sufficient statistics of (x = log10(rank + 1), y = value)
_N, _SX, _SXX, _SY, _SXY, _SYY = range(6)


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
    """

    vocab: GeneVocab
    intercept: np.ndarray
    slope: np.ndarray
    params: dict = field(default_factory=dict)

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
        method: Literal["global", "per_gene"] = "global",
        max_cells: int | None = None,
        random_state: int = 0,
        shrinkage: float = 10.0,
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
        max_cells
            Fit on a random subset of at most this many cells (``random_state``).
        shrinkage
            ``per_gene`` only: weight of the global line, in pseudo-observations spread like the
            data set's ranks. A gene seen ``n`` times keeps about ``n / (n + shrinkage)`` of its
            own line; genes never expressed get the global line.
        progress
            Show a progress bar over chunks of cells.

        Returns
        -------
        The fitted decoder; ``decoder.r2`` is the in-sample R^2 of the chosen method and
        ``params`` holds ``r2_global`` and ``r2_per_gene`` for comparison.
        """
        from tqdm.auto import tqdm

        from cellrlhf.cell2text.encoding import expression_matrix
        from cellrlhf.cell2text.ranking import cell_keys, gene_tie_keys, rank_expressed

        if method not in DECODER_METHODS:
            raise ValueError(f"method={method!r}; choose one of {DECODER_METHODS}.")
        if shrinkage < 0:
            raise ValueError(f"shrinkage={shrinkage} must be >= 0.")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k={top_k} must be a positive number of genes or None.")
        vocab, mapping = gene_mapping(adata, gene_symbols=gene_symbols, duplicates=duplicates)
        layer_name = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        matrix = expression_matrix(adata, layer)
        rows = _fit_rows(adata.n_obs, max_cells, random_state)
        obs_names = np.asarray(adata.obs_names, dtype=object)
        tie_keys = gene_tie_keys(vocab)

        stats = np.zeros((6, len(vocab)), dtype=np.float64)
        integer_valued = True
        n_chunks = -(-len(rows) // _FIT_CHUNK)
        blocks = _row_blocks(matrix, rows, adata.n_obs)
        for names, block in tqdm(
            blocks, total=n_chunks, desc="decoder fit", unit="chunk", disable=not progress
        ):
            block = sp.csr_matrix(mapping.apply(block), dtype=np.float32)
            ranked = rank_expressed(
                block,
                cell_keys(obs_names[names]),
                genes=tie_keys,
                seed=seed,
                top_k=top_k,
                layer_name="X" if layer is None else layer,
            )
            integer_valued &= bool(np.all(np.mod(ranked.values, 1.0) == 0.0))
            stats += _statistics(ranked, len(vocab))

        n_values = stats[_N].sum()
        if n_values < 2:
            raise ValueError(
                f"cannot fit the decoder: only {int(n_values)} expressed value(s) in {layer_name} "
                f"of the {len(rows)} cell(s) used. Pass a data set with expressed genes."
            )
        global_line = _global_line(stats)
        per_gene_line = _per_gene_lines(stats, global_line, shrinkage)
        r2_global = _r_squared(stats, *(np.full(len(vocab), v) for v in global_line))
        r2_per_gene = _r_squared(stats, *per_gene_line)
        if integer_valued:
            logger.warning(
                "%s holds whole numbers only (raw counts?). Decoded values will be on that "
                "scale; Cell2Sentence decodes log1p-normalized expression (sc.pp.normalize_total "
                "then sc.pp.log1p).",
                layer_name,
            )
        if method == "global":
            intercept, slope = (np.full(len(vocab), v) for v in global_line)
        else:
            intercept, slope = per_gene_line
        params = {
            "method": method,
            "r2": r2_global if method == "global" else r2_per_gene,
            "r2_global": r2_global,
            "r2_per_gene": r2_per_gene,
            "r2_note": "in-sample, on the expressed (rank, value) pairs of the fitted cells",
            "global_intercept": global_line[0],
            "global_slope": global_line[1],
            "shrinkage": float(shrinkage),
            "layer": layer,
            "gene_symbols": gene_symbols,
            "duplicates": duplicates,
            "top_k": top_k,
            "seed": seed,
            "n_cells": len(rows),
            "n_cells_total": int(adata.n_obs),
            "max_cells": max_cells,
            "random_state": random_state,
            "n_values": int(n_values),
            "rank": "0-based position of the gene in the cell sentence; x = log10(rank + 1)",
            "value_scale": "integer (raw counts?)" if integer_valued else "non-integer",
            "value_transform": f"none: decoded values are on the scale of {layer_name}",
        }
        logger.info(
            "decoder fit on %d cells, %d values: R^2 global %.3f, per-gene %.3f",
            len(rows),
            int(n_values),
            r2_global,
            r2_per_gene,
        )
        return cls(vocab, intercept, slope, params)

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
        return rows.to_csr(), DecodeReport.concatenate(reports)

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
        return cls(vocab, payload["intercept"], payload["slope"], params)


# ---------------------------------------------------------------------- fit helpers
def _fit_rows(n_obs: int, max_cells: int | None, random_state: int) -> np.ndarray:
    if n_obs == 0:
        raise ValueError("cannot fit the decoder on an AnnData without cells.")
    if max_cells is None or max_cells >= n_obs:
        return np.arange(n_obs)
    if max_cells < 1:
        raise ValueError(f"max_cells={max_cells} must be >= 1 or None.")
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n_obs, size=max_cells, replace=False))


def _row_blocks(matrix, rows: np.ndarray, n_obs: int):
    """``(row positions, CSR block)`` of the fitted cells, ``_FIT_CHUNK`` cells at a time."""
    from cellrlhf.cell2text.encoding import iter_csr_blocks

    if len(rows) == n_obs:  # every cell: the encoder's reader (backed, CSC, dense)
        for start, block in iter_csr_blocks(matrix, _FIT_CHUNK):
            yield slice(start, start + block.shape[0]), block
        return
    for start in range(0, len(rows), _FIT_CHUNK):
        chunk = rows[start : start + _FIT_CHUNK]
        block = matrix[chunk]
        block = block if sp.issparse(block) else np.asarray(block)
        yield chunk, sp.csr_matrix(block)


def _statistics(ranked, n_genes: int) -> np.ndarray:
    """Per-gene sums of 1, x, x^2, y, xy, y^2 over one chunk of ranked cells."""
    indptr = np.asarray(ranked.indptr, dtype=np.int64)
    genes = np.asarray(ranked.genes, dtype=np.int64)
    y = np.asarray(ranked.values, dtype=np.float64)
    lengths = np.diff(indptr)
    ranks = np.arange(len(genes), dtype=np.int64) - np.repeat(indptr[:-1], lengths)
    x = np.log10(ranks + 1.0)
    out = np.empty((6, n_genes), dtype=np.float64)
    out[_N] = np.bincount(genes, minlength=n_genes)
    for row, weights in ((_SX, x), (_SXX, x * x), (_SY, y), (_SXY, x * y), (_SYY, y * y)):
        out[row] = np.bincount(genes, weights=weights, minlength=n_genes)
    return out


def _solve_line(n, sx, sxx, sy, sxy):
    """Least-squares intercept and slope from sums (slope 0 where x does not vary)."""
    n = np.asarray(n, dtype=np.float64)
    denom = n * sxx - sx * sx
    ok = denom > 1e-12 * np.maximum(n * sxx, 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(ok, (n * sxy - sx * sy) / np.where(ok, denom, 1.0), 0.0)
        intercept = np.where(n > 0, (sy - slope * sx) / np.where(n > 0, n, 1.0), 0.0)
    return intercept, slope


def _global_line(stats: np.ndarray) -> tuple[float, float]:
    total = stats.sum(axis=1)
    a, b = _solve_line(total[_N], total[_SX], total[_SXX], total[_SY], total[_SXY])
    return float(a), float(b)


def _per_gene_lines(stats: np.ndarray, global_line: tuple[float, float], shrinkage: float):
    """Per-gene lines with ``shrinkage`` pseudo-observations on the global line."""
    a0, b0 = global_line
    total = stats.sum(axis=1)
    mean_x = total[_SX] / total[_N]
    mean_xx = total[_SXX] / total[_N]
    lam = float(shrinkage)
    n = stats[_N] + lam
    sx = stats[_SX] + lam * mean_x
    sxx = stats[_SXX] + lam * mean_xx
    sy = stats[_SY] + lam * (a0 + b0 * mean_x)
    sxy = stats[_SXY] + lam * (a0 * mean_x + b0 * mean_xx)
    intercept, slope = _solve_line(n, sx, sxx, sy, sxy)
    # genes that cannot be fitted (never seen, or one rank only without shrinkage): global line
    degenerate = (n * sxx - sx * sx) <= 1e-12 * np.maximum(n * sxx, 1e-300)
    intercept = np.where(degenerate, a0, intercept)
    slope = np.where(degenerate, b0, slope)
    return intercept, slope


def _r_squared(stats: np.ndarray, intercept: np.ndarray, slope: np.ndarray) -> float:
    """1 - SS_res / SS_tot over all (rank, value) pairs, from the per-gene sums."""
    n, sx, sxx, sy, sxy, syy = stats
    a, b = intercept, slope
    ss_res = syy - 2 * a * sy - 2 * b * sxy + a * a * n + 2 * a * b * sx + b * b * sxx
    total_n, total_sy, total_syy = n.sum(), sy.sum(), syy.sum()
    ss_tot = total_syy - total_sy * total_sy / total_n
    if ss_tot <= 0:
        return 1.0 if max(float(ss_res.sum()), 0.0) <= 1e-12 else 0.0
    return float(1.0 - max(float(ss_res.sum()), 0.0) / ss_tot)


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
