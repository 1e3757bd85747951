"""Streaming: tables per chunk from disk, Parquet shards + manifest that datasets loads, the CLI."""

from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from cellrlhf.cell2text.cli import cli
from cellrlhf.cell2text.encoding import encode
from cellrlhf.cell2text.stream import iter_sentences, load_manifest, write_sentences
from cellrlhf.cell2text.vocab import GeneVocab


@pytest.fixture
def h5ad(factories, tmp_path):
    adata = factories.make_adata(53, 30, seed=21)
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    return path, adata


def expected_sentences(adata, **kwargs) -> list[str]:
    return list(encode(adata, copy=True, **kwargs).obs["cell_sentence"])


def test_iter_sentences_from_path_equals_encode(h5ad):
    path, adata = h5ad
    tables = list(
        iter_sentences(path, chunk_size=10, seed=3, obs_columns=["cell_type"], progress=False)
    )
    assert [t.num_rows for t in tables] == [10, 10, 10, 10, 10, 3]
    table = pa.concat_tables(tables)
    assert table.column_names == ["cell_id", "cell_sentence", "n_genes", "cell_type"]
    assert table.schema.field("cell_sentence").type == pa.string()
    assert table.schema.field("n_genes").type == pa.int32()
    assert table["cell_id"].to_pylist() == list(adata.obs_names)
    assert table["cell_sentence"].to_pylist() == expected_sentences(adata, seed=3)
    assert table["cell_type"].to_pylist() == list(adata.obs["cell_type"].astype(str))
    lengths = [len(s.split()) for s in table["cell_sentence"].to_pylist()]
    assert table["n_genes"].to_pylist() == lengths


def test_iter_sentences_accepts_in_memory_and_backed_adata(h5ad):
    path, adata = h5ad
    expected = expected_sentences(adata, top_k=5)
    in_memory = pa.concat_tables(iter_sentences(adata, chunk_size=7, top_k=5, progress=False))
    assert in_memory["cell_sentence"].to_pylist() == expected
    backed = ad.read_h5ad(path, backed="r")
    try:
        streamed = pa.concat_tables(iter_sentences(backed, chunk_size=7, top_k=5, progress=False))
    finally:
        backed.file.close()
    assert streamed["cell_sentence"].to_pylist() == expected


def test_layer_is_streamed_from_disk(factories, tmp_path):
    adata = factories.make_adata(20, 15, seed=22)
    adata.X = sp.csr_matrix((20, 15), dtype=np.float32)
    path = tmp_path / "layered.h5ad"
    adata.write_h5ad(path)
    table = pa.concat_tables(iter_sentences(path, layer="counts", chunk_size=6, progress=False))
    assert table["cell_sentence"].to_pylist() == expected_sentences(adata, layer="counts")
    with pytest.raises(KeyError, match="layer 'nope'.*available layers"):
        next(iter_sentences(path, layer="nope", progress=False))


@pytest.mark.parametrize("fmt", ["dense", "csc"])
def test_dense_and_csc_files(factories, tmp_path, fmt, caplog):
    adata = factories.make_adata(25, 12, seed=23, fmt=fmt)
    path = tmp_path / f"{fmt}.h5ad"
    adata.write_h5ad(path)
    with caplog.at_level(logging.WARNING):
        table = pa.concat_tables(iter_sentences(path, chunk_size=4, progress=False))
    assert table["cell_sentence"].to_pylist() == expected_sentences(adata)
    assert any("CSC" in r.getMessage() for r in caplog.records) == (fmt == "csc")


def test_invalid_values_stop_the_stream_naming_rows(factories, tmp_path):
    adata = factories.make_adata(30, 10, density=0.9, seed=24)
    dense = adata.X.toarray()
    dense[[12, 14], 1] = np.nan
    adata.X = sp.csr_matrix(dense)
    path = tmp_path / "nan.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(ValueError, match=r"adata\.X: 2 of 10 cells.*NaN.*rows 12, 14"):
        list(iter_sentences(path, chunk_size=10, progress=False))


def test_empty_cells_are_counted_once(factories, tmp_path, caplog):
    adata = factories.make_adata(12, 6, seed=25)
    dense = adata.X.toarray()
    dense[[0, 5, 11]] = 0
    adata.X = sp.csr_matrix(dense)
    with caplog.at_level(logging.WARNING):
        table = pa.concat_tables(iter_sentences(adata, chunk_size=4, progress=False))
    assert [table["cell_sentence"][i].as_py() for i in (0, 5, 11)] == ["", "", ""]
    warnings = [r.getMessage() for r in caplog.records if "no expressed gene" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("3 of 12 cells")


def test_write_sentences_shards_manifest_and_datasets(h5ad, tmp_path):
    import datasets

    path, adata = h5ad
    out = tmp_path / "out"
    manifest = write_sentences(
        path,
        out,
        shard_size=20,
        chunk_size=7,
        seed=5,
        obs_columns=["cell_type", "batch"],
        source_checksum=True,
        progress=False,
    )
    expected = expected_sentences(adata, seed=5)
    assert manifest == load_manifest(out)
    assert [s["n_cells"] for s in manifest["shards"]] == [20, 20, 13]
    assert [s["file"] for s in manifest["shards"]] == [
        f"train-0000{i}-of-00003.parquet" for i in range(3)
    ]
    assert manifest["n_cells"] == 53 and manifest["n_empty"] == 0
    assert manifest["params"]["seed"] == 5 and manifest["params"]["obs_columns"] == [
        "cell_type",
        "batch",
    ]
    assert len(manifest["source"]["sha256"]) == 64
    assert manifest["columns"] == ["cell_id", "cell_sentence", "n_genes", "cell_type", "batch"]
    assert GeneVocab.load(out).genes == tuple(adata.var_names)
    assert not (out / ".partial").exists()

    loaded = datasets.load_dataset("parquet", data_dir=str(out))
    assert list(loaded) == ["train"]
    train = loaded["train"]
    assert train["cell_sentence"] == expected
    assert train["cell_id"] == list(adata.obs_names)
    assert train["batch"] == [int(b) for b in adata.obs["batch"]]
    files = sorted(str(p) for p in out.glob("*.parquet"))
    by_files = datasets.load_dataset("parquet", data_files=files, split="train")
    assert by_files["cell_sentence"] == expected
    # row groups follow the chunks; a shard never mixes files
    assert pq.ParquetFile(files[0]).metadata.num_rows == 20


def test_write_sentences_from_adata_and_overwrite_rules(h5ad, tmp_path):
    _, adata = h5ad
    out = tmp_path / "mem"
    manifest = write_sentences(adata, out, progress=False)
    assert manifest["source"] == {"path": None, "in_memory": True}
    assert len(manifest["shards"]) == 1
    with pytest.raises(FileExistsError, match="overwrite"):
        write_sentences(adata, out, progress=False)
    write_sentences(adata, out, top_k=3, overwrite=True, progress=False)
    table = pq.read_table(out / manifest["shards"][0]["file"])
    assert table["cell_sentence"].to_pylist() == expected_sentences(adata, top_k=3)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing"):
        write_sentences(adata, foreign, overwrite=True, progress=False)
    assert (foreign / "notes.txt").exists()


def test_failed_write_leaves_no_partial_shards(factories, tmp_path):
    adata = factories.make_adata(30, 10, density=0.9, seed=26)
    dense = adata.X.toarray()
    dense[25, 0] = -1
    adata.X = sp.csr_matrix(dense)
    out = tmp_path / "broken"
    with pytest.raises(ValueError, match="negative"):
        write_sentences(adata, out, chunk_size=10, shard_size=10, progress=False)
    assert list(out.iterdir()) == []


def test_cli_writes_output_and_reports_errors(h5ad, tmp_path, capsys):
    path, adata = h5ad
    out = tmp_path / "cli_out"
    status = cli(
        [
            str(path),
            "--out",
            str(out),
            "--top-k",
            "4",
            "--seed",
            "9",
            "--chunk-size",
            "11",
            "--shard-size",
            "30",
            "--obs-columns",
            "cell_type,batch",
            "--no-progress",
        ]
    )
    assert status == 0
    assert "53 cell sentences (0 empty) in 2 shard(s)" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["top_k"] == 4 and manifest["params"]["chunk_size"] == 11
    table = pa.concat_tables(pq.read_table(out / s["file"]) for s in manifest["shards"])
    assert table["cell_sentence"].to_pylist() == expected_sentences(adata, top_k=4, seed=9)

    assert cli([str(path), "--out", str(out), "--no-progress"]) == 1
    assert "overwrite" in capsys.readouterr().err
    assert cli([str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "x")]) == 1
    assert "no .h5ad file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--top_k must be a positive integer, got 0"):
        cli([str(path), "--out", str(out), "--top-k", "0"])


def test_ensembl_file_needs_gene_symbols(factories, tmp_path, capsys):
    adata = factories.make_adata(8, 6, seed=27)
    adata.var["symbol"] = list(adata.var_names)
    adata.var_names = [f"ENSG{i:011d}" for i in range(6)]
    path = tmp_path / "ensembl.h5ad"
    adata.write_h5ad(path)
    assert cli([str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "gene_symbols" in capsys.readouterr().err
    status = cli(
        [str(path), "--out", str(tmp_path / "o"), "--gene-symbols", "symbol", "--no-progress"]
    )
    assert status == 0


def test_not_an_h5ad_file_is_a_clear_error(tmp_path):
    path = tmp_path / "table.h5ad"
    path.write_text("cell,gene\n")
    with pytest.raises(ValueError, match="not an .h5ad"):
        next(iter_sentences(path, progress=False))
