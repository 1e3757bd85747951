"""Writing a build: a staging directory renamed into place, datasets saved with fixed features."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from cellrlhf.data.fingerprint import hash_table
from cellrlhf.data.layout import MANIFEST_FILENAME

__all__ = [
    "OutputError",
    "prepare_staging",
    "finish_staging",
    "datasets_progress",
    "to_dataset",
    "save_dataset",
    "save_dataset_dict",
    "shard_count",
]


class OutputError(RuntimeError):
    """The output directory cannot be written."""


def prepare_staging(out_dir: Path, overwrite: bool) -> Path:
    """A fresh staging directory next to ``out_dir`` (renamed into place when complete).

    A directory that exists and is not a finished build (no manifest) is never replaced.
    """
    if out_dir.exists():
        if not overwrite:
            raise OutputError(
                f"{out_dir} exists; set output.overwrite: true or choose another dir."
            )
        if not out_dir.is_dir() or (
            any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILENAME).exists()
        ):
            raise OutputError(
                f"{out_dir} exists, is not empty and is not a built cellrlhf dataset; refusing to "
                "overwrite it. Choose another output.dir."
            )
    staging = out_dir.parent / f".{out_dir.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def finish_staging(staging: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` (a previous build, or nothing) by the finished staging directory."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)


@contextlib.contextmanager
def datasets_progress(enabled: bool):
    """Silence ``datasets``' own progress bars while the build runs without progress."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    if not enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def to_dataset(rows: list[dict], features):
    """A ``datasets.Dataset`` of ``rows`` with exactly ``features``, and its content hash."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.info import DatasetInfo
    from datasets.table import InMemoryTable

    table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=features)), hash_table(table)


def shard_count(dataset, max_shard_size: str | int) -> int:
    """Shards for ``save_to_disk``: at least one, so that empty splits can be loaded back."""
    from datasets.utils.py_utils import convert_file_size_to_int

    size = dataset.data.nbytes
    return max(1, -(-size // convert_file_size_to_int(max_shard_size)))


def save_dataset(dataset, path: Path, *, max_shard_size: str | int) -> None:
    """``save_to_disk`` that also works for an empty dataset."""
    dataset.save_to_disk(str(path), num_shards=shard_count(dataset, max_shard_size))


def save_dataset_dict(
    rows_by_split: dict[str, list[dict]],
    features,
    path: Path,
    *,
    max_shard_size: str,
    parquet_dir: Path | None = None,
) -> dict[str, str]:
    """Save a DatasetDict (and Parquet files); returns the content hash of every split."""
    from datasets import DatasetDict

    built = {split: to_dataset(rows, features) for split, rows in rows_by_split.items()}
    dataset_dict = DatasetDict({split: dataset for split, (dataset, _) in built.items()})
    dataset_dict.save_to_disk(
        str(path),
        num_shards={split: shard_count(d, max_shard_size) for split, d in dataset_dict.items()},
    )
    if parquet_dir is not None:
        parquet_dir.mkdir(parents=True, exist_ok=True)
        for split, dataset in dataset_dict.items():
            dataset.to_parquet(str(parquet_dir / f"{split}.parquet"))
    return {split: digest for split, (_, digest) in built.items()}
