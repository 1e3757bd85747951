"""Content fingerprints of built datasets, stable across processes, chunkings and shardings.

``datasets``' own ``_fingerprint`` of a table built in memory is random per process, so the build
hashes what it writes, straight from the Arrow columns: for every column, the stream of value
lengths and the stream of value bytes (nested lists and structs are flattened the same way).
Streams are concatenation-invariant, so a table hashed batch by batch while it is written, or
shard by shard after it is read back, gives the same digest.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

__all__ = ["TableHasher", "hash_table", "hash_dataset", "hash_json"]


class _Streams:
    """Named sha256 streams (one per leaf of a column's type)."""

    def __init__(self) -> None:
        self._streams: dict[str, hashlib._Hash] = {}

    def update(self, name: str, data: bytes | memoryview) -> None:
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = hashlib.sha256()
        stream.update(data)

    def digest(self) -> str:
        final = hashlib.sha256()
        for name in sorted(self._streams):
            final.update(name.encode() + b"\x1d" + self._streams[name].digest())
        return final.hexdigest()


def _feed(streams: _Streams, name: str, array) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    if array.null_count:
        raise ValueError(f"column {name!r} has null values; built datasets have none.")
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        width = np.int64 if pa.types.is_large_string(kind) else np.int32
        offsets = np.frombuffer(array.buffers()[1], dtype=width)[
            array.offset : array.offset + len(array) + 1
        ]
        streams.update(name + "#len", np.diff(offsets).astype(np.int64).tobytes())
        data = array.buffers()[2]
        if data is not None and offsets[-1] > offsets[0]:
            streams.update(name + "#data", memoryview(data)[offsets[0] : offsets[-1]])
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        offsets = np.asarray(array.offsets)
        streams.update(name + "#len", np.diff(offsets).astype(np.int64).tobytes())
        _feed(streams, name + "[]", array.flatten())
    elif pa.types.is_struct(kind):
        for i, child in enumerate(array.flatten()):
            _feed(streams, f"{name}.{kind.field(i).name}", child)
    elif pa.types.is_floating(kind):
        streams.update(
            name + "#f32", array.to_numpy(zero_copy_only=False).astype(np.float32).tobytes()
        )
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        streams.update(
            name + "#i64", array.to_numpy(zero_copy_only=False).astype(np.int64).tobytes()
        )
    else:
        values = pc.cast(array, pa.string())
        _feed(streams, name, values)


class TableHasher:
    """Incremental content hash of a table given batch by batch (``pyarrow`` batches/tables)."""

    def __init__(self) -> None:
        self._streams = _Streams()
        self.n_rows = 0
        self._columns: list[str] | None = None

    def update(self, batch) -> None:
        names = list(batch.schema.names)
        if self._columns is None:
            self._columns = names
        elif names != self._columns:
            raise ValueError(f"batch columns {names} differ from {self._columns}.")
        for name in names:
            column = batch.column(name)
            chunks = column.chunks if hasattr(column, "chunks") else [column]
            for chunk in chunks:
                _feed(self._streams, name, chunk)
        self.n_rows += batch.num_rows

    def hexdigest(self) -> str:
        header = json.dumps({"columns": self._columns or [], "rows": self.n_rows}).encode()
        return hashlib.sha256(header + self._streams.digest().encode()).hexdigest()


def hash_table(table) -> str:
    """Fingerprint of a ``pyarrow.Table`` (or RecordBatch)."""
    hasher = TableHasher()
    hasher.update(table)
    return hasher.hexdigest()


def hash_dataset(dataset) -> str:
    """Fingerprint of a ``datasets.Dataset`` (equal to the fingerprint taken at build time)."""
    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    return hash_table(dataset.data.table)


def hash_json(payload) -> str:
    """sha256 of canonical JSON."""
    return hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()
    ).hexdigest()
