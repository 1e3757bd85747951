"""Stream cell sentences from an .h5ad to sharded Parquet, in memory independent of the cell count.

:func:`iter_sentences` reads an .h5ad on disk (or an AnnData, in memory or backed) a chunk of
cells at a time and yields one Arrow table per chunk; :func:`write_sentences` writes those tables
to Parquet shards plus a ``manifest.json``, a directory that
``datasets.load_dataset("parquet", data_dir=out_dir)`` loads directly (split ``train``).

Opening a path reads only ``obs`` and ``var`` into memory; the expression matrix (``X`` or a
layer) is read through h5py one chunk at a time, so peak memory depends on ``chunk_size``, not on
the number of cells. (``anndata.read_h5ad(path, backed="r")`` would load every layer.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import shutil
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from cellrlhf.cell2text.encoding import (
    DEFAULT_CHUNK_SIZE,
    SentenceEncoder,
    encode_params,
    expression_matrix,
    iter_csr_blocks,
    warn_empty_cells,
)
from cellrlhf.cell2text.vocab import gene_mapping

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "MANIFEST_FILENAME",
    "SHARD_PREFIX",
    "iter_sentences",
    "load_manifest",
    "open_expression",
    "write_sentences",
]

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 200_000
MANIFEST_FILENAME = "manifest.json"
SHARD_PREFIX = "train"
_FORMAT = "cellrlhf.cell_sentences"
_VERSION = 1


# --------------------------------------------------------------------------- sources
@dataclass
class ExpressionSource:
    """An AnnData's cells, genes and expression matrix, the matrix possibly still on disk.

    Attributes
    ----------
    adata
        AnnData with ``obs`` and ``var`` (for a path: without ``X``).
    matrix
        The expression matrix (in memory, an anndata backed dataset or an h5py dataset).
    layer_name
        ``"X"`` or the layer's name.
    path
        The .h5ad file, when opened from a path.
    """

    adata: object
    matrix: object
    layer_name: str
    path: Path | None = None


@contextlib.contextmanager
def open_expression(path_or_adata, layer: str | None = None) -> Iterator[ExpressionSource]:
    """Open an .h5ad path (matrix left on disk) or wrap an AnnData, as an ExpressionSource."""
    import anndata as ad

    layer_name = "X" if layer is None else layer
    if isinstance(path_or_adata, ad.AnnData):
        yield ExpressionSource(path_or_adata, expression_matrix(path_or_adata, layer), layer_name)
        return
    path = Path(path_or_adata)
    if not path.is_file():
        raise FileNotFoundError(f"no .h5ad file at {path}.")
    import h5py
    from anndata.io import read_elem, sparse_dataset

    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not an .h5ad (HDF5) file: {err}") from None
    try:
        if layer is None:
            if "X" not in handle:
                raise ValueError(f"{path} has no X; pass layer='<name>'.")
            element = handle["X"]
        else:
            layers = handle.get("layers", {})
            if layer not in layers:
                raise KeyError(
                    f"layer {layer!r} is not in {path}; available layers: {list(layers)}."
                )
            element = layers[layer]
        matrix = sparse_dataset(element) if isinstance(element, h5py.Group) else element
        adata = ad.AnnData(obs=read_elem(handle["obs"]), var=read_elem(handle["var"]))
        if tuple(matrix.shape) != adata.shape:
            raise ValueError(
                f"{path}: {layer_name} has shape {matrix.shape}, obs x var is {adata.shape}."
            )
        yield ExpressionSource(adata, matrix, layer_name, path)
    finally:
        handle.close()


# --------------------------------------------------------------------------- iteration
def _obs_column(series: pd.Series) -> pa.Array:
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(series.cat.categories.dtype)
    return pa.array(series.to_numpy(), from_pandas=True)


def _check_obs_columns(obs: pd.DataFrame, obs_columns: Sequence[str]) -> list[str]:
    columns = list(obs_columns)
    missing = [c for c in columns if c not in obs.columns]
    if missing:
        raise KeyError(f"obs columns {missing} not found; available: {list(obs.columns)}.")
    reserved = {"cell_id", "cell_sentence", "n_genes"} & set(columns)
    if reserved:
        raise ValueError(f"obs columns {sorted(reserved)} clash with the output's own columns.")
    return columns


def iter_sentences(
    path_or_adata,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    layer: str | None = None,
    top_k: int | None = None,
    gene_symbols: str | None = None,
    duplicates: str = "error",
    seed: int = 0,
    obs_columns: Sequence[str] = (),
    progress: bool = True,
    stats: dict | None = None,
) -> Iterator[pa.Table]:
    """Cell sentences, one Arrow table per chunk of ``chunk_size`` cells.

    Parameters
    ----------
    path_or_adata
        An .h5ad path (only ``obs``/``var`` are loaded; the matrix is read chunk by chunk) or an
        AnnData (in memory or backed).
    chunk_size
        Cells per table (memory, not output: sentences do not depend on it).
    layer, top_k, gene_symbols, duplicates, seed
        As for :func:`~cellrlhf.cell2text.encoding.encode`.
    obs_columns
        ``obs`` columns copied into each table (categoricals become their values).
    progress
        Show a tqdm progress bar (cells).
    stats
        Optional dict filled with ``n_cells``, ``n_empty``, ``n_genes`` (vocabulary size) and
        ``vocab`` (the :class:`GeneVocab`), for callers that record them.

    Yields
    ------
    pyarrow.Table
        Columns ``cell_id`` (obs name), ``cell_sentence``, ``n_genes`` (int32), then
        ``obs_columns``.

    Raises
    ------
    ValueError
        NaN, infinite or negative values, counted within the chunk where they are found.
    """
    with open_expression(path_or_adata, layer) as source:
        yield from _iter_tables(
            source,
            chunk_size=chunk_size,
            top_k=top_k,
            gene_symbols=gene_symbols,
            duplicates=duplicates,
            seed=seed,
            obs_columns=obs_columns,
            progress=progress,
            stats=stats,
        )


def _iter_tables(
    source: ExpressionSource,
    *,
    chunk_size: int,
    top_k: int | None,
    gene_symbols: str | None,
    duplicates: str,
    seed: int,
    obs_columns: Sequence[str],
    progress: bool,
    stats: dict | None,
) -> Iterator[pa.Table]:
    from tqdm.auto import tqdm

    adata = source.adata
    columns = _check_obs_columns(adata.obs, obs_columns)
    vocab, mapping = gene_mapping(adata, gene_symbols=gene_symbols, duplicates=duplicates)
    encoder = SentenceEncoder(vocab, mapping, top_k=top_k, seed=seed, layer_name=source.layer_name)
    obs_names = np.asarray(adata.obs_names, dtype=object)
    n_empty = 0
    with tqdm(total=adata.n_obs, unit="cells", desc="cell sentences", disable=not progress) as bar:
        for start, block in iter_csr_blocks(source.matrix, chunk_size):
            stop = start + block.shape[0]
            encoded = encoder(block, obs_names[start:stop], row_offset=start)
            n_empty += int(np.count_nonzero(encoded.n_genes == 0))
            arrays = {
                "cell_id": pa.array(obs_names[start:stop], type=pa.string()),
                "cell_sentence": encoded.sentences,
                "n_genes": pa.array(encoded.n_genes, type=pa.int32()),
            }
            for column in columns:
                arrays[column] = _obs_column(adata.obs[column].iloc[start:stop])
            yield pa.table(arrays)
            bar.update(stop - start)
    warn_empty_cells(n_empty, adata.n_obs, source.layer_name)
    if stats is not None:
        stats.update(n_cells=adata.n_obs, n_empty=n_empty, n_genes=len(vocab), vocab=vocab)


# --------------------------------------------------------------------------- Parquet output
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _shard_name(index: int, n_shards: int) -> str:
    return f"{SHARD_PREFIX}-{index:05d}-of-{n_shards:05d}.parquet"


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} is not empty; pass overwrite=True (--overwrite) to replace its cell "
                "sentences, or choose another directory."
            )
        if not (out_dir / MANIFEST_FILENAME).exists():
            raise FileExistsError(
                f"{out_dir} is not empty and holds no {MANIFEST_FILENAME}: refusing to delete "
                "files that were not written by write_sentences."
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


class _ShardWriter:
    """Writes tables into shards of ``shard_size`` rows, named after the final shard count."""

    def __init__(self, tmp_dir: Path, n_rows: int, shard_size: int, compression: str) -> None:
        self.tmp_dir = tmp_dir
        self.shard_size = shard_size
        self.n_shards = max(1, -(-n_rows // shard_size))
        self.compression = compression
        self.writer = None
        self.index = -1
        self.rows_in_shard = 0
        self.shards: list[dict] = []

    def _open_next(self, schema: pa.Schema) -> None:
        import pyarrow.parquet as pq

        self.close()
        self.index += 1
        name = _shard_name(self.index, self.n_shards)
        dictionary = [f.name for f in schema if f.name not in {"cell_id", "cell_sentence"}]
        self.writer = pq.ParquetWriter(
            self.tmp_dir / name, schema, compression=self.compression, use_dictionary=dictionary
        )
        self.shards.append({"file": name, "n_cells": 0})
        self.rows_in_shard = 0

    def write(self, table: pa.Table) -> None:
        offset = 0
        while offset < table.num_rows:
            if self.writer is None or self.rows_in_shard == self.shard_size:
                self._open_next(table.schema)
            take = min(self.shard_size - self.rows_in_shard, table.num_rows - offset)
            self.writer.write_table(table.slice(offset, take))
            self.rows_in_shard += take
            self.shards[-1]["n_cells"] += take
            offset += take

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _BackgroundWriter:
    """Writes tables on a thread (Parquet compression releases the GIL) while the next chunk is
    ranked; at most one table waits in the queue, so memory stays bounded."""

    def __init__(self, writer: _ShardWriter) -> None:
        self.writer = writer
        self.error: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._run, name="parquet-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            table = self.queue.get()
            if table is None:
                return
            if self.error is None:
                try:
                    self.writer.write(table)
                except BaseException as err:  # re-raised in the producing thread
                    self.error = err

    def put(self, table: pa.Table) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(table)

    def finish(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self.writer.close()
        if self.error is not None:
            raise self.error


def write_sentences(
    path_or_adata,
    out_dir: str | Path,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    layer: str | None = None,
    top_k: int | None = None,
    gene_symbols: str | None = None,
    duplicates: str = "error",
    seed: int = 0,
    obs_columns: Sequence[str] = (),
    compression: str = "zstd",
    source_checksum: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write cell sentences as Parquet shards + ``manifest.json`` + ``gene_vocab.json``.

    Parameters
    ----------
    path_or_adata
        An .h5ad path or an AnnData (see :func:`iter_sentences`).
    out_dir
        Output directory (created; must be empty unless ``overwrite``). Shards are named
        ``train-00000-of-00003.parquet`` so that ``datasets.load_dataset("parquet",
        data_dir=out_dir)`` gives one ``train`` split.
    shard_size
        Cells per Parquet file.
    chunk_size
        Cells read and ranked at a time; bounds memory.
    layer, top_k, gene_symbols, duplicates, seed, obs_columns, progress
        See :func:`iter_sentences`.
    compression
        Parquet codec (``"zstd"``, ``"snappy"``, ``"none"``...).
    source_checksum
        Record the sha256 of the source .h5ad in the manifest (reads the whole file once more).
    overwrite
        Replace an earlier output in ``out_dir`` (one with a manifest).

    Returns
    -------
    dict
        The manifest: ``params``, ``n_cells``, ``n_empty``, ``columns``, ``shards`` (file,
        n_cells) and ``source`` (path, size, sha256 when asked).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}.")
    out_dir = Path(out_dir)
    stats: dict = {}
    with open_expression(path_or_adata, layer) as source:
        n_cells = source.adata.n_obs
        source_path = source.path
        _prepare_out_dir(out_dir, overwrite)
        tables = _iter_tables(
            source,
            chunk_size=chunk_size,
            top_k=top_k,
            gene_symbols=gene_symbols,
            duplicates=duplicates,
            seed=seed,
            obs_columns=obs_columns,
            progress=progress,
            stats=stats,
        )
        shards, columns = _write_shards(
            tables, out_dir, n_cells, shard_size, compression, _empty_schema(obs_columns)
        )
    stats["vocab"].save(out_dir)
    manifest = {
        "format": _FORMAT,
        "version": _VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "params": {
            **encode_params(
                layer=layer,
                top_k=top_k,
                gene_symbols=gene_symbols,
                duplicates=duplicates,
                seed=seed,
                n_cells=n_cells,
                n_empty=stats["n_empty"],
                n_genes=stats["n_genes"],
            ),
            "obs_columns": list(obs_columns),
            "chunk_size": int(chunk_size),
            "shard_size": int(shard_size),
            "compression": compression,
        },
        "n_cells": int(n_cells),
        "n_empty": int(stats["n_empty"]),
        "columns": columns or ["cell_id", "cell_sentence", "n_genes", *obs_columns],
        "shards": shards,
        "source": _source_record(source_path, source_checksum),
    }
    (out_dir / MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=1))
    logger.info("wrote %d cell sentences in %d shard(s) to %s", n_cells, len(shards), out_dir)
    return manifest


def _write_shards(
    tables: Iterable[pa.Table],
    out_dir: Path,
    n_cells: int,
    shard_size: int,
    compression: str,
    empty_schema: pa.Schema,
) -> tuple[list[dict], list[str]]:
    """Write ``tables`` as the shards of ``out_dir``; returns the shards and the column names.

    Shards are written into ``out_dir/.partial`` (on a background thread) and moved into
    ``out_dir`` once all are complete; on error the partial directory is removed. Without any
    table, one empty shard of ``empty_schema`` is written.
    """
    tmp_dir = out_dir / ".partial"
    tmp_dir.mkdir()
    writer = _ShardWriter(tmp_dir, n_cells, shard_size, compression)
    background = _BackgroundWriter(writer)
    columns: list[str] = []
    try:
        for table in tables:
            columns = table.column_names
            background.put(table)
        background.finish()
    except BaseException:
        with contextlib.suppress(BaseException):
            background.finish()
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    if not writer.shards:  # no cells: still write one (empty) shard with the schema
        writer._open_next(empty_schema)
        writer.close()
    for shard in writer.shards:
        os.replace(tmp_dir / shard["file"], out_dir / shard["file"])
    tmp_dir.rmdir()
    return writer.shards, columns


def _empty_schema(obs_columns: Sequence[str]) -> pa.Schema:
    fields = [("cell_id", pa.string()), ("cell_sentence", pa.string()), ("n_genes", pa.int32())]
    return pa.schema(fields + [(c, pa.string()) for c in obs_columns])


def _source_record(path: Path | None, checksum: bool) -> dict:
    if path is None:
        return {"path": None, "in_memory": True}
    record = {"path": str(path), "size": path.stat().st_size}
    if checksum:
        record["sha256"] = _sha256(path)
    return record


def load_manifest(out_dir: str | Path) -> dict:
    """The manifest of a :func:`write_sentences` directory."""
    path = Path(out_dir) / MANIFEST_FILENAME
    if not path.exists():
        raise FileNotFoundError(f"no {MANIFEST_FILENAME} in {out_dir}; not a cell sentence output.")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a cellrlhf cell sentence manifest.")
    return manifest
