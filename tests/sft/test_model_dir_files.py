"""The model directory's copy of the training data's manifest (``data_manifest.json``)."""

import json

import pytest

from cellrlhf.sft.model_dir import DATA_MANIFEST_FILENAME, read_data_manifest


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
