"""The one reader of the data stage's directory: opening checks, parts, files, column checks."""

from __future__ import annotations

import json
import shutil

import pytest

from cellrlhf.data.layout import DatasetDir, DatasetDirError, open_dataset_dir
from tests.fixtures.tiny_data import GENES, write_tiny_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("layout") / "data")


@pytest.fixture
def copy(tiny, tmp_path):
    return shutil.copytree(tiny, tmp_path / "copy")


def _set_manifest(path, **changes):
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, **changes}))


def test_the_error_is_a_value_error():
    assert issubclass(DatasetDirError, ValueError)


def test_opening_names_what_is_missing(tmp_path):
    with pytest.raises(DatasetDirError, match="no dataset given: pass --dataset_dir"):
        open_dataset_dir(None)
    with pytest.raises(DatasetDirError, match="does not exist; run `cellrlhf data build` first"):
        open_dataset_dir(tmp_path / "nope")
    with pytest.raises(DatasetDirError, match="has no manifest.json: not a built cellrlhf dataset"):
        open_dataset_dir(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "cellrlhf.model"}))
    with pytest.raises(DatasetDirError, match="is not a cellrlhf dataset manifest"):
        open_dataset_dir(tmp_path)


def test_parts_and_files_read_back(tiny):
    dataset = open_dataset_dir(str(tiny))
    assert isinstance(dataset, DatasetDir) and dataset.path == tiny
    assert dataset.manifest["fingerprint"] == "tiny-0"
    assert list(dataset.vocab().genes) == GENES
    assert list(dataset.decoder().vocab.genes) == GENES
    assert set(dataset.sft) == {"train", "validation", "test"}
    assert dataset.load_sft() is dataset.sft  # read once
    # 2 contexts x (6 control + 6 KLF1 + 6 FOXA1) cells
    assert dataset.load_pretrain().num_rows == dataset.pretrain.num_rows == 36
    assert set(dataset.rl) == {"train"} and dataset.rl["train"].num_rows == 4
    assert dataset.perturbation_targets() == ["KLF1", "FOXA1"]


def test_perturbation_targets_split_combinations_and_skip_controls(copy):
    _set_manifest(copy, perturbation_targets=["KLF1+FOXA1", "foxa1", "<control>", "MYC", "control"])
    assert open_dataset_dir(copy).perturbation_targets() == ["KLF1", "FOXA1", "MYC"]
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["perturbation_targets"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    # without the list: the perturbation column of the SFT splits ("" rows skipped)
    assert sorted(open_dataset_dir(copy).perturbation_targets()) == ["FOXA1", "KLF1"]
    shutil.rmtree(copy / "sft")
    assert open_dataset_dir(copy).perturbation_targets() == []


def test_missing_parts_are_none_and_required_ones_an_error(copy):
    for name in ("pretrain", "sft", "rl"):
        shutil.rmtree(copy / name)
    (copy / "expression_decoder.json").unlink()
    (copy / "gene_vocab.json").unlink()
    dataset = open_dataset_dir(copy)
    assert dataset.pretrain is None and dataset.sft is None and dataset.rl is None
    with pytest.raises(DatasetDirError, match="has no pretrain/ corpus"):
        dataset.load_pretrain()
    with pytest.raises(DatasetDirError, match="has no sft/ data"):
        dataset.load_sft()
    assert dataset.decoder(required=False) is None
    with pytest.raises(DatasetDirError, match="expression_decoder.json: fidelity cannot be"):
        dataset.decoder()
    with pytest.raises(DatasetDirError, match="has no gene_vocab.json: it is not a dataset"):
        dataset.vocab()
    with pytest.raises(DatasetDirError, match="has no splits.json"):
        _ = dataset.splits


def test_splits_read_back(copy):
    (copy / "splits.json").write_text(json.dumps({"kind": "random_cells", "cells": {}}))
    assert open_dataset_dir(copy).splits == {"kind": "random_cells", "cells": {}}


def test_columns_are_checked(tiny, copy):
    from datasets import Dataset, DatasetDict, load_from_disk

    sft = load_from_disk(str(tiny / "sft"))
    shutil.rmtree(copy / "sft")
    DatasetDict({k: v.remove_columns("task") for k, v in sft.items()}).save_to_disk(
        str(copy / "sft")
    )
    with pytest.raises(DatasetDirError, match=r"lacks column\(s\) \['task'\]"):
        _ = open_dataset_dir(copy).sft
    shutil.rmtree(copy / "sft")
    sft["train"].save_to_disk(str(copy / "sft"))
    with pytest.raises(DatasetDirError, match="holds a single Dataset"):
        open_dataset_dir(copy).load_sft()
    shutil.rmtree(copy / "pretrain")
    Dataset.from_dict({"sentence": ["a"]}).save_to_disk(str(copy / "pretrain"))
    with pytest.raises(DatasetDirError, match="has no 'text' column"):
        open_dataset_dir(copy).load_pretrain()


def test_the_manifest_alone_strict_or_tolerant(tiny, tmp_path):
    from cellrlhf.data.layout import read_dataset_manifest

    assert read_dataset_manifest(tiny) == open_dataset_dir(tiny).manifest
    assert read_dataset_manifest(tiny, required=False) == open_dataset_dir(tiny).manifest
    with pytest.raises(DatasetDirError, match="has no manifest.json: not a built cellrlhf"):
        read_dataset_manifest(tmp_path)
    for path in (None, "", tmp_path, tmp_path / "nope"):  # nothing there: None
        assert read_dataset_manifest(path, required=False) is None
    (tmp_path / "manifest.json").write_text("[1, 2]")  # not an object
    assert read_dataset_manifest(tmp_path, required=False) is None
    (tmp_path / "manifest.json").write_text("{broken")
    assert read_dataset_manifest(tmp_path, required=False) is None
    # tolerant: an older manifest without the format is shown as it is; strict refuses it
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "old"}))
    assert read_dataset_manifest(tmp_path, required=False) == {"name": "old"}
    with pytest.raises(DatasetDirError, match="is not a cellrlhf dataset manifest"):
        read_dataset_manifest(tmp_path)
