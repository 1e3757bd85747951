import hashlib
import os

import pytest

from cellrlhf.data import registry
from cellrlhf.data.registry import (
    ChecksumError,
    DatasetNotFoundError,
    RegistryEntry,
    fetch,
    get_entry,
)


@pytest.fixture()
def fake_entry(monkeypatch, tmp_path):
    payload = b"pretend h5ad bytes"
    entry = RegistryEntry(
        name="fake_set",
        filename="fake.h5ad",
        sha256=hashlib.sha256(payload).hexdigest(),
        url=None,
        upstream="nowhere",
        license="CC0",
        citation="none",
        description="test entry",
    )
    monkeypatch.setitem(registry.REGISTRY, entry.name, entry)
    monkeypatch.delenv(registry.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(registry.CACHE_DIR_ENV, str(tmp_path / "cache"))
    return entry, payload


def test_data_dir_argument_is_searched_and_verified(fake_entry, tmp_path):
    entry, payload = fake_entry
    (tmp_path / entry.filename).write_bytes(payload)
    assert fetch(entry.name, data_dir=tmp_path) == tmp_path / entry.filename


def test_env_data_dirs_are_searched_in_order(fake_entry, tmp_path, monkeypatch):
    entry, payload = fake_entry
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (second / entry.filename).write_bytes(payload)
    monkeypatch.setenv(registry.DATA_DIR_ENV, os.pathsep.join([str(first), str(second)]))
    assert fetch(entry.name) == second / entry.filename


def test_checksum_mismatch_raises_and_keeps_the_file(fake_entry, tmp_path):
    entry, _ = fake_entry
    bad = tmp_path / entry.filename
    bad.write_bytes(b"something else")
    with pytest.raises(ChecksumError, match=f"registered 'fake_set' file has {entry.sha256}"):
        fetch(entry.name, data_dir=tmp_path)
    assert bad.exists()  # never deleted or overwritten


def test_not_found_without_upstream_says_where_it_looked(fake_entry, tmp_path):
    entry, _ = fake_entry
    with pytest.raises(DatasetNotFoundError, match="no single upstream file") as info:
        fetch(entry.name, data_dir=tmp_path)
    assert str(tmp_path / entry.filename) in str(info.value)


def test_download_disabled(monkeypatch, tmp_path):
    monkeypatch.delenv(registry.DATA_DIR_ENV, raising=False)
    monkeypatch.setitem(
        registry.REGISTRY,
        "perturbench_devel",
        RegistryEntry(**{**get_entry("perturbench_devel").to_dict(), "bundled": None}),
    )
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        fetch("perturbench_devel", data_dir=tmp_path, cache_dir=tmp_path / "c", download=False)


def test_unknown_name_lists_registry():
    with pytest.raises(KeyError, match="perturbench_devel"):
        get_entry("norman2019_full")


def test_registry_entries_are_pinned_and_attributed():
    for entry in registry.REGISTRY.values():
        assert len(entry.sha256) == 64
        assert entry.license and entry.citation
        if entry.url is not None:
            commit = entry.url.split("/")[5]
            assert len(commit) == 40, f"{entry.name} URL is not pinned to a commit"


@pytest.mark.realdata
def test_real_file_in_data_dir_verifies(real_data_dir):
    path = fetch("perturbench_devel", data_dir=real_data_dir)
    assert path.name == "perturbench_devel.h5ad"


def test_bundled_pbmc68k_is_verified(monkeypatch, tmp_path):
    pytest.importorskip("scanpy")
    monkeypatch.delenv(registry.DATA_DIR_ENV, raising=False)
    path = fetch("pbmc68k_reduced", cache_dir=tmp_path, download=False)
    assert path.name == "10x_pbmc68k_reduced.h5ad"
