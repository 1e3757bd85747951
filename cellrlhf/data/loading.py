"""Open a data source (registered data set, local ``.h5ad`` or the simulator) for streaming.

A file source is opened without loading its expression: ``obs`` and ``var`` are read, and the
expression matrix (``X`` or any layer, sparse or dense) is read in row blocks straight from the
HDF5 file through cell2text's :func:`~cellrlhf.cell2text.stream.open_expression`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellrlhf.data.registry import REGISTRY, fetch, file_sha256

__all__ = ["load_anndata", "DataSource", "SourceReadError", "open_source", "read_error"]

logger = logging.getLogger(__name__)


class SourceReadError(ValueError):
    """A source file cannot be read: truncated, corrupt or not an .h5ad at all."""


def read_error(path, err: BaseException) -> SourceReadError | None:
    """``err`` as a :class:`SourceReadError` naming ``path`` when it came from reading the file.

    h5py and anndata report damaged files as ``OSError``, ``RuntimeError``, ``KeyError`` or
    unicode errors from deep inside; a missing file or a refused permission are not damage.
    """
    if path is None or isinstance(err, (FileNotFoundError, PermissionError, SourceReadError)):
        return None
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    from_reader = any(f"{os.sep}{lib}{os.sep}" in f for f in frames for lib in ("h5py", "anndata"))
    if not isinstance(err, (OSError, RuntimeError, KeyError, UnicodeError)) or not from_reader:
        return None
    detail = " ".join(str(err).split())[:300]
    return SourceReadError(
        f"cannot read {path}: the file is truncated or corrupt ({type(err).__name__}: {detail}). "
        "Copy or download it again (registered data sets: `cellrlhf data fetch <name>`)."
    )


def _resolve_path(name_or_path: str | os.PathLike, data_dir, cache_dir) -> tuple[Path, str | None]:
    text = str(name_or_path)
    if text in REGISTRY:
        return fetch(text, data_dir=data_dir, cache_dir=cache_dir), text
    path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"{text!r} is neither a registered data set ({sorted(REGISTRY)}) nor an existing file."
        )
    if path.suffix != ".h5ad":
        raise ValueError(f"{path} is not an .h5ad file; convert it with anndata first.")
    return path, None


def load_anndata(
    name_or_path: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    backed: bool = False,
):
    """Load a registered data set (verified by sha256) or a local ``.h5ad``.

    Parameters
    ----------
    name_or_path
        Registry name (``"perturbench_devel"``, ``"pbmc68k_reduced"``) or a path.
    data_dir, cache_dir
        See :func:`cellrlhf.data.registry.fetch`.
    backed
        Open read-only backed (``X`` stays on disk).
    """
    import anndata as ad

    path, _ = _resolve_path(name_or_path, data_dir, cache_dir)
    return ad.read_h5ad(path, backed="r" if backed else None)


@dataclass
class DataSource:
    """An opened source: metadata in memory, expression read on demand.

    Attributes
    ----------
    obs, var
        Cell and gene metadata of the whole source.
    kind
        ``"registry"``, ``"file"``, ``"simulated"`` or ``"anndata"`` (passed in memory).
    checksum
        sha256 of the source file (or a future of it, see :attr:`sha256`); for simulated
        data, of the simulator settings; for an in-memory AnnData, of its obs names, var names
        and matrices.
    path
        The file, when there is one.
    adata
        The in-memory AnnData, when there is no file to stream from.
    info
        Registry entry, path, simulator settings: whatever identifies the source.
    simulated
        Whether the data are simulated (``uns["simulated"]``).
    expression
        cell2text's ``ExpressionSource`` of the layer (``.matrix`` is read in blocks; for a
        file it stays on disk until :meth:`close`).
    """

    obs: pd.DataFrame
    var: pd.DataFrame
    kind: str
    checksum: str | Future
    path: Path | None = None
    adata: object | None = None
    info: dict = field(default_factory=dict)
    simulated: bool = False
    expression: object | None = None
    _stack: contextlib.ExitStack | None = None

    def close(self) -> None:
        """Close the expression file (when the source is a file)."""
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def __enter__(self) -> DataSource:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        damaged = read_error(self.path, exc) if exc is not None else None
        if damaged is not None:
            raise damaged from exc

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    @property
    def sha256(self) -> str:
        """The checksum (a local file's is computed in a background thread while the build
        streams the cells: hashing a large file costs as much as reading it)."""
        if isinstance(self.checksum, Future):
            self.checksum = self.checksum.result()
        return self.checksum


def _hash_in_background(path: Path) -> Future:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
    future = executor.submit(file_sha256, path)
    executor.shutdown(wait=False)
    return future


def _anndata_sha256(adata) -> str:
    digest = hashlib.sha256()
    for names in (adata.obs_names, adata.var_names):
        digest.update("\x1f".join(map(str, names)).encode())
        digest.update(b"\x1e")
    X = adata.X
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        for part in (X.indptr, X.indices, X.data):
            digest.update(np.ascontiguousarray(part).tobytes())
    elif X is not None:
        digest.update(np.ascontiguousarray(np.asarray(X)).tobytes())
    for name in sorted(adata.layers.keys()):
        layer = adata.layers[name]
        digest.update(name.encode())
        if sp.issparse(layer):
            layer = sp.csr_matrix(layer)
            for part in (layer.indptr, layer.indices, layer.data):
                digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(np.ascontiguousarray(np.asarray(layer)).tobytes())
    return digest.hexdigest()


def _read_simulated_flag(path: Path) -> bool:
    import h5py
    from anndata.io import read_elem

    with h5py.File(path, "r") as handle:
        if "uns" in handle and "simulated" in handle["uns"]:
            return bool(read_elem(handle["uns"]["simulated"]))
    return False


def _attach_expression(source: DataSource, layer: str | None) -> DataSource:
    """Open the expression matrix (cell2text's reader) for the duration of the build."""
    from cellrlhf.cell2text.stream import open_expression
    from cellrlhf.data.expression import as_supported_dtype

    stack = contextlib.ExitStack()
    try:
        target = source.adata if source.adata is not None else source.path
        source.expression = stack.enter_context(open_expression(target, layer))
    except BaseException:
        stack.close()
        raise
    source._stack = stack
    expression = source.expression
    expression.matrix = as_supported_dtype(expression.matrix, expression.layer_name)
    if source.adata is None:  # metadata read once, by the reader
        source.obs = source.expression.adata.obs
        source.var = source.expression.adata.var
    return source


def open_source(
    config,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    adata=None,
    layer: str | None = None,
) -> DataSource:
    """Open the source of a data-build config (use as a context manager, or call ``close``).

    Parameters
    ----------
    config
        A :class:`~cellrlhf.data.config.SourceConfig`.
    data_dir, cache_dir
        Where registered data sets are looked up (see :func:`~cellrlhf.data.registry.fetch`).
    adata
        An in-memory AnnData to use instead of the configured source (Python API).
    layer
        The expression layer to open (default ``X``).
    """
    path = None
    try:
        source = _metadata_source(config, data_dir, cache_dir, adata)
        path = source.path
        return _attach_expression(source, layer)
    except Exception as err:
        if adata is None and path is None and config.simulate is None:
            path = config.path or config.dataset
        damaged = read_error(path, err)
        if damaged is not None:
            raise damaged from err
        raise


def _metadata_source(config, data_dir, cache_dir, adata) -> DataSource:
    if adata is not None:
        if config.use_raw:
            adata = _raw_as_adata(adata)
        return DataSource(
            obs=adata.obs,
            var=adata.var,
            kind="anndata",
            checksum=_anndata_sha256(adata),
            adata=adata,
            info={"kind": "anndata"},
            simulated=bool(adata.uns.get("simulated", False)),
        )
    if config.simulate is not None:
        from cellrlhf.data.simulate import simulate_perturbation_data

        settings = dict(config.simulate)
        sim = simulate_perturbation_data(**settings)
        if config.use_raw:
            raise ValueError("source.use_raw does not apply to simulated data.")
        digest = hashlib.sha256(
            json.dumps({"simulate": settings}, sort_keys=True).encode()
        ).hexdigest()
        return DataSource(
            obs=sim.obs,
            var=sim.var,
            kind="simulated",
            checksum=digest,
            adata=sim,
            info={
                "kind": "simulated",
                "simulate": settings,
                "description": sim.uns["simulation"]["description"],
            },
            simulated=True,
        )
    name = config.dataset if config.dataset is not None else config.path
    path, registry_name = _resolve_path(name, data_dir, cache_dir)
    digest = REGISTRY[registry_name].sha256 if registry_name else _hash_in_background(path)
    info = (
        {"kind": "registry", **REGISTRY[registry_name].to_dict()}
        if registry_name
        else {"kind": "file", "path": str(path)}
    )
    if config.use_raw or not config.backed:
        import anndata as ad

        loaded = ad.read_h5ad(path)
        if config.use_raw:
            loaded = _raw_as_adata(loaded)
        source = DataSource(
            obs=loaded.obs,
            var=loaded.var,
            kind=info["kind"],
            checksum=digest,
            path=path,
            adata=loaded,
            info=info,
            simulated=bool(loaded.uns.get("simulated", False)),
        )
    else:
        source = DataSource(
            obs=pd.DataFrame(),
            var=pd.DataFrame(),
            kind=info["kind"],
            checksum=digest,
            path=path,
            info=info,
            simulated=_read_simulated_flag(path),
        )
    if config.use_raw:
        source.info["use_raw"] = True
    return source


def _raw_as_adata(adata):
    if adata.raw is None:
        raise ValueError("source.use_raw is set but the AnnData has no .raw.")
    raw = adata.raw.to_adata()
    raw.obs = adata.obs.copy()
    return raw
