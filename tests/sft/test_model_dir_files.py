"""The model directory's files: the copy of the training data's manifest
(``data_manifest.json``) and the provenance in ``cellrlhf.json``."""

import hashlib
import json
from importlib import metadata
from types import SimpleNamespace

import pytest

from cellrlhf.sft.model_dir import (
    DATA_MANIFEST_FILENAME,
    load_model_info,
    read_data_manifest,
    write_model_files,
)


def test_read_data_manifest_returns_the_object(tmp_path):
    payload = {"name": "norman", "source": {"license": "cc-by-4.0"}}
    (tmp_path / DATA_MANIFEST_FILENAME).write_text(json.dumps(payload))
    assert read_data_manifest(tmp_path) == payload


@pytest.mark.parametrize("content", [None, "{", "[1, 2]", '"text"'])
def test_read_data_manifest_is_empty_when_missing_or_not_an_object(tmp_path, content):
    if content is not None:
        (tmp_path / DATA_MANIFEST_FILENAME).write_text(content)
    assert read_data_manifest(tmp_path) == {}


def test_licence_prompt_and_model_card_read_the_same_manifest(tmp_path):
    from cellrlhf.hub.license_prompt import data_license
    from cellrlhf.sft.model_card import read_model_metadata

    (tmp_path / DATA_MANIFEST_FILENAME).write_text(
        json.dumps({"name": "norman", "source": {"license": "cc-by-4.0"}})
    )
    assert data_license(model=tmp_path) == "cc-by-4.0"
    assert read_model_metadata(tmp_path).data_manifest["name"] == "norman"
    (tmp_path / DATA_MANIFEST_FILENAME).unlink()
    assert data_license(model=tmp_path) is None
    assert read_model_metadata(tmp_path).data_manifest == {}


def _write_files(tmp_path, info: dict):
    missing = tmp_path / "absent"
    dataset = SimpleNamespace(
        path=tmp_path,
        vocab_path=missing,
        decoder_path=missing,
        manifest_path=missing,
        evidence_index_path=missing,
    )
    target = tmp_path / "model"
    target.mkdir()
    write_model_files(target, dataset=dataset, run_config={}, info=info, card_name="m")
    return load_model_info(target)


def test_records_the_environment_it_was_saved_in(tmp_path, torch_threads):
    torch_threads(1)
    info = _write_files(tmp_path, {"stage": "sft"})
    assert info["stage"] == "sft" and info["environment"]["torch_threads"] == 1
    assert info["environment"]["versions"]["torch"] == metadata.version("torch")
    assert info["start_weights_sha256"] is None  # no base model named


@pytest.mark.parametrize("key", ["base_model", "sft_model"])
def test_records_the_checksum_of_the_weights_it_started_from(tmp_path, key):
    start = tmp_path / "start"
    start.mkdir()
    (start / "model.safetensors").write_bytes(b"weights")
    other = tmp_path / "other"  # an RL stage names both: it started from sft_model
    info = {"stage": "x", "base_model": str(other if key == "sft_model" else start)}
    if key == "sft_model":
        info["sft_model"] = str(start)
    recorded = _write_files(tmp_path, info)["start_weights_sha256"]
    assert recorded == hashlib.sha256(b"weights").hexdigest()


def test_a_hub_id_base_model_has_no_checksum(tmp_path):
    assert _write_files(tmp_path, {"base_model": "org/model"})["start_weights_sha256"] is None
