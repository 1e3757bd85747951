"""Fit the decoder's rank -> value lines (:meth:`~cellrlhf.cell2text.decoder.ExpressionDecoder.fit`).

One pass over the cells, a chunk at a time, ranks each cell's expressed genes as
:func:`~cellrlhf.cell2text.encoding.encode` does and adds up, per gene, the sums of 1, x, x^2,
y, xy and y^2 with ``x = log10(rank + 1)`` and ``y`` the value. The global line, the per-gene
lines (shrunk towards the global one) and their in-sample R^2 are computed from those sums.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import scipy.sparse as sp

from cellrlhf.cell2text.vocab import gene_mapping

__all__ = ["DECODER_METHODS", "fit_rank_value_lines", "log_rank", "reference_cells"]

logger = logging.getLogger(__name__)

DECODER_METHODS = ("global", "per_gene", "neighbours")
_FIT_CHUNK = 4096
# per-gene sufficient statistics of (x = log10(rank + 1), y = value)
_N, _SX, _SXX, _SY, _SXY, _SYY = range(6)


def fit_rank_value_lines(
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
):
    """``(vocab, intercept, slope, params)`` of the decoder fitted on ``adata``.

    The arguments are those of :meth:`~cellrlhf.cell2text.decoder.ExpressionDecoder.fit`.
    """
    from cellrlhf.cell2text.encoding import expression_matrix

    _check_fit_options(method, shrinkage, top_k)
    vocab, mapping = gene_mapping(adata, gene_symbols=gene_symbols, duplicates=duplicates)
    layer_name = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    matrix = expression_matrix(adata, layer)
    rows = _fit_rows(adata.n_obs, max_cells, random_state)
    stats, integer_valued = _accumulate_statistics(
        adata, matrix, rows, vocab, mapping, layer=layer, top_k=top_k, seed=seed, progress=progress
    )
    n_values = stats[_N].sum()
    if n_values < 2:
        raise ValueError(
            f"cannot fit the decoder: only {int(n_values)} expressed value(s) in {layer_name} "
            f"of the {len(rows)} cell(s) used. Pass a data set with expressed genes."
        )
    global_line = _global_line(stats)
    global_lines = tuple(np.full(len(vocab), v) for v in global_line)
    per_gene_line = _per_gene_lines(stats, global_line, shrinkage)
    r2_global = _r_squared(stats, *global_lines)
    r2_per_gene = _r_squared(stats, *per_gene_line)
    if integer_valued:
        logger.warning(
            "%s holds whole numbers only (raw counts?). Decoded values will be on that "
            "scale; Cell2Sentence decodes log1p-normalized expression (sc.pp.normalize_total "
            "then sc.pp.log1p).",
            layer_name,
        )
    # neighbours: the per-gene lines, corrected at decode time by similar reference cells
    intercept, slope = global_lines if method == "global" else per_gene_line
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
    return vocab, intercept, slope, params


def _check_fit_options(method: str, shrinkage: float, top_k: int | None) -> None:
    if method not in DECODER_METHODS:
        raise ValueError(f"method={method!r}; choose one of {DECODER_METHODS}.")
    if shrinkage < 0:
        raise ValueError(f"shrinkage={shrinkage} must be >= 0.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be a positive number of genes or None.")


def _accumulate_statistics(adata, matrix, rows, vocab, mapping, *, layer, top_k, seed, progress):
    """Per-gene sums over the ``rows`` cells, and whether every ranked value is a whole number."""
    stats = np.zeros((6, len(vocab)), dtype=np.float64)
    integer_valued = True
    for ranked in _ranked_blocks(
        adata, matrix, rows, vocab, mapping, layer=layer, top_k=top_k, seed=seed, progress=progress
    ):
        integer_valued &= bool(np.all(np.mod(ranked.values, 1.0) == 0.0))
        stats += _statistics(ranked, len(vocab))
    return stats, integer_valued


def _ranked_blocks(adata, matrix, rows, vocab, mapping, *, layer, top_k, seed, progress):
    """The ``rows`` cells ranked as ``encode`` ranks them (``RankedCells``), a chunk at a time."""
    from tqdm.auto import tqdm

    from cellrlhf.cell2text.ranking import cell_keys, gene_tie_keys, rank_expressed

    obs_names = np.asarray(adata.obs_names, dtype=object)
    tie_keys = gene_tie_keys(vocab)
    n_chunks = -(-len(rows) // _FIT_CHUNK)
    blocks = _row_blocks(matrix, rows, adata.n_obs)
    for names, block in tqdm(
        blocks, total=n_chunks, desc="decoder fit", unit="chunk", disable=not progress
    ):
        block = sp.csr_matrix(mapping.apply(block), dtype=np.float32)
        yield rank_expressed(
            block,
            cell_keys(obs_names[names]),
            genes=tie_keys,
            seed=seed,
            top_k=top_k,
            layer_name="X" if layer is None else layer,
        )


def reference_cells(
    adata,
    *,
    layer: str | None = None,
    gene_symbols: str | None = None,
    duplicates: Literal["error", "sum", "first"] = "error",
    top_k: int | None = None,
    seed: int = 0,
    max_cells: int | None = 5000,
    random_state: int = 0,
    n_neighbors: int = 20,
):
    """The reference cells of a ``neighbours`` decoder: a random subset of at most ``max_cells``
    cells (``random_state``), each cell's sentence genes and their values
    (:class:`~cellrlhf.cell2text.neighbour_decoding.NeighbourCells`)."""
    from cellrlhf.cell2text.encoding import expression_matrix
    from cellrlhf.cell2text.neighbour_decoding import NeighbourCells

    vocab, mapping = gene_mapping(adata, gene_symbols=gene_symbols, duplicates=duplicates)
    rows = _fit_rows(adata.n_obs, max_cells, random_state)
    blocks = _ranked_blocks(
        adata,
        expression_matrix(adata, layer),
        rows,
        vocab,
        mapping,
        layer=layer,
        top_k=top_k,
        seed=seed,
        progress=False,
    )
    return NeighbourCells.from_ranked(blocks, n_neighbors)


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


def log_rank(indptr) -> np.ndarray:
    """``x = log10(rank + 1)`` of every gene of cells in CSR layout (``indptr``), where the rank is
    the gene's 0-based position in its cell's sentence: the decoder lines' variable."""
    indptr = np.asarray(indptr, dtype=np.int64)
    ranks = np.arange(indptr[-1], dtype=np.int64) - np.repeat(indptr[:-1], np.diff(indptr))
    return np.log10(ranks + 1.0)


def _statistics(ranked, n_genes: int) -> np.ndarray:
    """Per-gene sums of 1, x, x^2, y, xy, y^2 over one chunk of ranked cells."""
    indptr = np.asarray(ranked.indptr, dtype=np.int64)
    genes = np.asarray(ranked.genes, dtype=np.int64)
    y = np.asarray(ranked.values, dtype=np.float64)
    x = log_rank(indptr)
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
