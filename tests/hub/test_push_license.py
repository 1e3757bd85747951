"""``cellrlhf push`` asks for a licence when the data names none (or says to pass --license)."""

from __future__ import annotations

import io
import json

import pytest

from cellrlhf.hub import push
from cellrlhf.hub.license_prompt import LICENSE_NEEDED, data_license, resolve_license


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _model(tmp_path, source):
    model = tmp_path / "model"
    model.mkdir()
    (model / "data_manifest.json").write_text(json.dumps({"name": "d", "source": source}))
    return model


def test_license_from_the_flag_the_data_or_the_user(tmp_path):
    unknown = _model(tmp_path, {"path": "my.h5ad"})
    assert data_license(model=unknown) is None
    assert resolve_license("MIT", model=unknown) == "mit"
    with pytest.raises(ValueError, match="pass --license"):
        resolve_license(None, model=unknown, stdin=io.StringIO())
    asked = []
    answer = resolve_license(
        None, model=unknown, stdin=_Terminal(), ask=lambda q: asked.append(q) or " CC-BY-4.0 "
    )
    assert answer == "cc-by-4.0" and "licence is unknown" in asked[0]
    with pytest.raises(ValueError, match="pass --license"):
        resolve_license(None, model=unknown, stdin=_Terminal(), ask=lambda q: "")
    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "manifest.json").write_text(json.dumps({"source": {"license": "CC-BY-4.0"}}))
    assert data_license(dataset=dataset) == "cc-by-4.0"
    assert resolve_license(None, dataset=dataset, stdin=io.StringIO()) is None  # the card's


def test_push_without_a_licence_off_a_terminal_names_the_flag(tmp_path, monkeypatch, capsys):
    model = _model(tmp_path, {"path": "my.h5ad"})
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr("sys.stdin", io.StringIO())
    called = []
    monkeypatch.setattr(push, "push_model", lambda *a, **k: called.append(k))
    assert push.cli(["--model", str(model), "--repo-id", "me/model"]) == 2
    assert capsys.readouterr().err.strip() == f"cellrlhf push: {LICENSE_NEEDED}"
    assert called == []  # nothing was uploaded


def test_push_asks_on_a_terminal(tmp_path, monkeypatch):
    model = _model(tmp_path, {"path": "my.h5ad"})
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr("sys.stdin", _Terminal())
    monkeypatch.setattr("builtins.input", lambda prompt: "cc-by-4.0")

    class _Info:
        commit_url = "https://huggingface.co/me/model/commit/1"

    called = []
    monkeypatch.setattr(push, "push_model", lambda *a, **k: called.append(k) or _Info())
    assert push.cli(["--model", str(model), "--repo-id", "me/model"]) == 0
    assert called[0]["license"] == "cc-by-4.0"
