"""A small registry of public data sets: pinned upstream file, sha256, licence and citation.

A registered data set is looked up, in order, in

1. the data directories: the ``data_dir`` argument, then ``$CELLRLHF_DATA_DIR`` (several
   directories may be joined with ``os.pathsep``) - offline machines and CI put the files here;
2. the download cache: the ``cache_dir`` argument, ``$CELLRLHF_CACHE_DIR``, or the user cache
   (``~/.cache/cellrlhf`` on Linux);
3. a copy bundled with an installed package (scanpy ships ``pbmc68k_reduced``);
4. the upstream URL, pinned to a commit, downloaded once into the cache with :mod:`pooch`.

Every file is checked against the registered sha256 wherever it was found; a mismatch raises
:class:`ChecksumError` and the file is never used. Files in a data directory are never modified.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "DATA_DIR_ENV",
    "CACHE_DIR_ENV",
    "RegistryEntry",
    "REGISTRY",
    "ChecksumError",
    "DatasetNotFoundError",
    "registered_names",
    "get_entry",
    "fetch",
    "file_sha256",
    "resolve_data_dirs",
    "resolve_cache_dir",
]

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "CELLRLHF_DATA_DIR"
CACHE_DIR_ENV = "CELLRLHF_CACHE_DIR"


class ChecksumError(RuntimeError):
    """A data file's sha256 differs from the registered one."""


class DatasetNotFoundError(FileNotFoundError):
    """A registered data set is in no data directory, cache or bundle and cannot be downloaded."""


@dataclass(frozen=True)
class RegistryEntry:
    """One registered data set.

    Attributes
    ----------
    name
        Registry name (``"perturbench_devel"``).
    filename
        File name in a data directory or the cache.
    sha256
        Hex digest of the exact file.
    url
        Upstream raw-file URL pinned to a commit; ``None`` for files that have no single
        upstream file (converted data) and must be placed in a data directory.
    upstream
        Human-readable origin: repository, path and commit.
    license, citation, description
        What users must know before using the data.
    bundled
        ``"package:relative/path"`` of a copy shipped inside an installed Python package.
    """

    name: str
    filename: str
    sha256: str
    url: str | None
    upstream: str
    license: str
    citation: str
    description: str
    bundled: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


_PERTURBENCH_COMMIT = "4dd6a03c54ef348f6be6e46e21ea7f80eb2daaa2"
_SCANPY_COMMIT = "f9c947769989018a9d8c69552a586a6d3e4bf6ff"

REGISTRY: dict[str, RegistryEntry] = {
    entry.name: entry
    for entry in (
        RegistryEntry(
            name="perturbench_devel",
            filename="perturbench_devel.h5ad",
            sha256="220998f5630c813228c8661c86dd52244b9ac87127511289af90e0d900d8429b",
            url=(
                "https://raw.githubusercontent.com/altoslabs/perturbench/"
                f"{_PERTURBENCH_COMMIT}/src/perturbench/data/resources/devel.h5ad"
            ),
            upstream=(
                f"altoslabs/perturbench@{_PERTURBENCH_COMMIT}:src/perturbench/data/resources/"
                "devel.h5ad"
            ),
            license="BSD-3-Clause",
            citation=(
                "Norman TM et al. Exploring genetic interaction manifolds constructed from rich "
                "single-cell phenotypes. Science 365:786-793 (2019), doi:10.1126/science.aax4438. "
                "McFaline-Figueroa JL et al. Multiplex single-cell chemical genomics reveals the "
                "kinase dependence of the response to targeted therapy. Cell Genomics 4:100487 "
                "(2024), doi:10.1016/j.xgen.2023.100487. Wu Y et al. PerturBench: benchmarking "
                "machine learning models for cellular perturbation analysis. arXiv:2408.10609 "
                "(2024)."
            ),
            description=(
                "PerturBench development subset: 5,961 cells x 500 HVGs (gene symbols). Norman "
                "2019 K562 CRISPRa (18 single + 15 double perturbations + control) and "
                "McFaline-Figueroa 2023 CRISPRi (9 kinase targets + control in A172, T98G, "
                "U87MG). X = log1p(normalize_total 1e4) on the full transcriptome, then 500 HVGs."
            ),
        ),
        RegistryEntry(
            name="pbmc68k_reduced",
            filename="10x_pbmc68k_reduced.h5ad",
            sha256="e71d41e737c941559b7c57c9243bdb3d2c889c2adfdf00e3422ac6b46783676f",
            url=(
                "https://raw.githubusercontent.com/scverse/scanpy/"
                f"{_SCANPY_COMMIT}/src/scanpy/datasets/10x_pbmc68k_reduced.h5ad"
            ),
            upstream=f"scverse/scanpy@{_SCANPY_COMMIT}:src/scanpy/datasets/10x_pbmc68k_reduced.h5ad",
            license="BSD-3-Clause (scanpy); data: 10x Genomics, CC BY 4.0",
            citation=(
                "Zheng GXY et al. Massively parallel digital transcriptional profiling of single "
                "cells. Nat Commun 8:14049 (2017), doi:10.1038/ncomms14049. Wolf FA, Angerer P, "
                "Theis FJ. SCANPY: large-scale single-cell gene expression data analysis. Genome "
                "Biol 19:15 (2018), doi:10.1186/s13059-017-1382-0."
            ),
            description=(
                "700 PBMCs x 765 genes from 10x 68k PBMCs, bundled with scanpy "
                "(sc.datasets.pbmc68k_reduced). X is scaled (negative values); .raw holds "
                "log1p-normalized expression; obs.bulk_labels are cell types."
            ),
            bundled="scanpy:datasets/10x_pbmc68k_reduced.h5ad",
        ),
        RegistryEntry(
            name="kang2018_liger_600cells",
            filename="kang2018_liger_600cells.h5ad",
            sha256="3091af987ef32da302550966c409d5b29f3c2c62879e5cf90b7eb3c9620d8b7b",
            url=None,
            upstream="welch-lab/liger@cb68d4c5630d91ede2bb44bb978bf54f9c0cb15f:inst/extdata/{ctrl,stim}.h5 (converted)",
            license="data public (GEO GSE96583); liger package GPL-3",
            citation=(
                "Kang HM et al. Multiplexed droplet single-cell RNA-sequencing using natural "
                "genetic variation. Nat Biotechnol 36:89-94 (2018), doi:10.1038/nbt.4042."
            ),
            description="Kang 2018 PBMCs, IFN-beta stimulated vs control, 600 cells x 249 genes, raw counts.",
        ),
        RegistryEntry(
            name="zhao2021_glioblastoma_panobinostat",
            filename="zhao2021_glioblastoma_panobinostat.h5ad",
            sha256="9ba414d01149e0ab517bbf10d264431fba84c21202a30dec0229b23d001f3359",
            url=None,
            upstream="const-ae/lemur@95be4f93024db6ea150cb01ee4e2a9adfafb5c93:data/glioblastoma_example_data.rda (converted)",
            license="MIT",
            citation=(
                "Zhao W et al. Deconvolution of cell type-specific drug responses in human tumor "
                "tissue with single-cell RNA-seq. Genome Med 13:82 (2021), "
                "doi:10.1186/s13073-021-00894-y."
            ),
            description=(
                "Zhao 2021 glioblastoma slice cultures, panobinostat vs DMSO; 5,000 cells x 300 "
                "genes, raw counts, symbols in var.gene_symbol."
            ),
        ),
    )
}


def registered_names() -> list[str]:
    """Names of the registered data sets."""
    return sorted(REGISTRY)


def get_entry(name: str) -> RegistryEntry:
    """The registry entry called ``name``; ``KeyError`` lists the registered names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"no registered data set {name!r}; registered: {registered_names()}. For your own "
            "file give a path to an .h5ad instead."
        ) from None


def resolve_data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Data directories searched first: the argument, then ``$CELLRLHF_DATA_DIR`` entries."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    env = os.environ.get(DATA_DIR_ENV, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    return dirs


def resolve_cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The download cache: the argument, ``$CELLRLHF_CACHE_DIR``, or the user cache."""
    if path is not None:
        return Path(path)
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    import pooch

    return Path(pooch.os_cache("cellrlhf"))


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (memoized per path, size and modification time)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_MEMO:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASH_MEMO[key] = digest.hexdigest()
    return _HASH_MEMO[key]


def _verify(path: Path, entry: RegistryEntry, where: str) -> Path:
    actual = file_sha256(path)
    if actual != entry.sha256:
        raise ChecksumError(
            f"{path} ({where}) has sha256 {actual}, but the registered {entry.name!r} file has "
            f"{entry.sha256}. It is a different or corrupted file: replace it with the upstream "
            f"file ({entry.upstream}) or remove it; for your own data pass the .h5ad path "
            "instead of the registry name."
        )
    return path


def _bundled_path(entry: RegistryEntry) -> Path | None:
    if entry.bundled is None:
        return None
    package, relative = entry.bundled.split(":", 1)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.exists():
            return candidate
    return None


def fetch(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> Path:
    """Path of a registered data set's verified file (downloaded once if needed).

    Parameters
    ----------
    name
        Registry name (see :func:`registered_names`).
    data_dir
        A directory searched before ``$CELLRLHF_DATA_DIR``.
    cache_dir
        Download cache (default ``$CELLRLHF_CACHE_DIR`` or the user cache).
    download
        Allow downloading from the pinned upstream URL.

    Raises
    ------
    ChecksumError
        A found file has the wrong sha256.
    DatasetNotFoundError
        Not found anywhere and not downloadable (offline, or no upstream file).
    """
    entry = get_entry(name)
    searched: list[str] = []
    for directory in resolve_data_dirs(data_dir):
        candidate = directory / entry.filename
        searched.append(str(candidate))
        if candidate.exists():
            return _verify(candidate, entry, "data directory")
    cache = resolve_cache_dir(cache_dir)
    cached = cache / entry.filename
    searched.append(str(cached))
    if cached.exists():
        return _verify(cached, entry, "download cache")
    bundled = _bundled_path(entry)
    if bundled is not None:
        return _verify(bundled, entry, f"bundled with {entry.bundled.split(':')[0]}")
    if entry.url is None or not download:
        why = "it has no single upstream file" if entry.url is None else "download=False"
        raise DatasetNotFoundError(
            f"data set {name!r} ({entry.filename}) not found; searched {searched}, and {why}. "
            f"Put the file in a data directory (argument data_dir or ${DATA_DIR_ENV})."
        )
    import pooch

    logger.info("downloading %s from %s into %s", name, entry.url, cache)
    try:
        path = pooch.retrieve(
            entry.url,
            known_hash=f"sha256:{entry.sha256}",
            fname=entry.filename,
            path=cache,
            progressbar=False,
        )
    except ValueError as err:  # pooch's hash mismatch
        raise ChecksumError(
            f"download of {name!r} from {entry.url} failed verification: {err}"
        ) from err
    except Exception as err:  # network errors come in many types (requests, OSError, ...)
        raise DatasetNotFoundError(
            f"data set {name!r} not found locally (searched {searched}) and the download from "
            f"{entry.url} failed: {err}. Offline machines: put {entry.filename} in a data "
            f"directory (argument data_dir or ${DATA_DIR_ENV})."
        ) from err
    return _verify(Path(path), entry, "downloaded")
