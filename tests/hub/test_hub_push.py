"""``push_model`` / ``push_dataset`` / ``cellrlhf push`` through the real HfApi, against a local
server that speaks the Hub's upload API (no network)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

DATASET_MANIFEST = '{"format": "cellrlhf.dataset", "name": "tiny", "simulated": true}'


def _local_hub_module():
    if "local_hub" not in sys.modules:
        path = Path(__file__).with_name("local_hub.py")
        spec = importlib.util.spec_from_file_location("local_hub", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["local_hub"] = module
        spec.loader.exec_module(module)
    return sys.modules["local_hub"]


@pytest.fixture
def local_hub(monkeypatch):
    import huggingface_hub.constants as constants

    url, record, stop = _local_hub_module().start_local_hub()
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_never_printed")
    yield record
    stop()


def test_push_model_commits_exactly_the_plan(tiny_model_dir, local_hub, capsys, caplog):
    from cellrlhf.hub.push import push_model
    from cellrlhf.hub.upload_plan import plan_model_upload

    info = push_model(tiny_model_dir, "me/tiny-cells", private=True, commit_message="first")
    assert info.oid == f"{1:040x}"
    assert local_hub.repos["me/tiny-cells"]["visibility"] == "private"
    (commit,) = local_hub.commits
    assert commit["repo"] == "me/tiny-cells" and commit["type"] == "model"
    assert commit["revision"] == "main" and commit["header"]["summary"] == "first"
    plan = plan_model_upload(tiny_model_dir, repo_id="me/tiny-cells")
    assert sorted(commit["files"]) == plan.paths
    for name in plan.paths:
        if name != "README.md":
            assert commit["files"][name] == (tiny_model_dir / name).read_bytes(), name
    card = commit["files"]["README.md"].decode()
    assert local_hub.validated == [card]  # the card's metadata went through Hub validation
    assert yaml.safe_load(card.split("---\n")[1])["library_name"] == "transformers"
    assert all(h == "Bearer hf_test_token_never_printed" for h in local_hub.auth_headers)
    out = capsys.readouterr()
    assert "hf_test_token" not in out.out + out.err + caplog.text


def test_cell_lm_push_to_hub_uses_the_same_path(tiny_model_dir, local_hub):
    from cellrlhf.chat import CellLM

    lm = CellLM.from_pretrained(tiny_model_dir)
    lm.push_to_hub("org/tiny-pushed")
    (commit,) = local_hub.commits
    assert commit["repo"] == "org/tiny-pushed"
    assert (
        commit["files"]["model.safetensors"] == (tiny_model_dir / "model.safetensors").read_bytes()
    )
    assert 'CellLM.from_pretrained("org/tiny-pushed")' in commit["files"]["README.md"].decode()


def test_push_cli_dataset(tmp_path, local_hub, capsys):
    import datasets

    from cellrlhf.hub.push import cli

    d = tmp_path / "dataset"
    d.mkdir()
    (d / "manifest.json").write_text(DATASET_MANIFEST)
    datasets.Dataset.from_dict({"text": ["<cell> A B </cell>"] * 3}).save_to_disk(
        str(d / "pretrain")
    )
    assert cli(["--dataset", str(d), "--repo-id", "me/tiny-data", "--license", "mit"]) == 0
    assert local_hub.repos["me/tiny-data"]["type"] == "dataset"
    (commit,) = local_hub.commits
    assert commit["type"] == "dataset"
    assert sorted(commit["files"]) == [
        "README.md",
        "data/pretrain/train-00000-of-00001.parquet",
        "manifest.json",
    ]
    assert capsys.readouterr().out.strip().endswith(f"commit/{1:040x}")


def test_push_space_creates_a_gradio_space(local_hub):
    from cellrlhf.hub.push import cli

    assert cli(["--space-for", "me/tiny-cells", "--repo-id", "me/tiny-chat"]) == 0
    created = local_hub.repos["me/tiny-chat"]
    assert created["type"] == "space" and created["sdk"] == "gradio"
    (commit,) = local_hub.commits
    assert commit["type"] == "space"
    assert sorted(commit["files"]) == ["README.md", "app.py", "requirements.txt"]
    meta = yaml.safe_load(commit["files"]["README.md"].decode().split("---\n")[1])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["models"] == ["me/tiny-cells"]
    assert commit["files"]["requirements.txt"].decode().strip() == "cellrlhf[chat,scanpy]"


def _tiny_dataset(tmp_path):
    import datasets

    d = tmp_path / "dataset"
    d.mkdir()
    (d / "manifest.json").write_text(DATASET_MANIFEST)
    datasets.Dataset.from_dict({"text": ["<cell> A B </cell>"] * 3}).save_to_disk(
        str(d / "pretrain")
    )
    return d


def _push_fails(capsys, argv, status, *expected):
    from cellrlhf.cli import main

    assert main(["push", *argv]) == status
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    assert "hf_test_token_never_printed" not in text
    for part in expected:
        assert part in captured.err, captured.err
    return captured.err


def test_push_without_a_token_says_how_to_log_in(tmp_path, local_hub, monkeypatch, capsys):
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    argv = ["--dataset", str(_tiny_dataset(tmp_path)), "--repo-id", "me/tiny-data"]
    _push_fails(capsys, argv, 2, "not logged in", "huggingface-cli login", "HF_TOKEN")
    assert not local_hub.repos and not local_hub.commits


@pytest.mark.parametrize("how", ["unreachable", "offline_mode"])
def test_push_offline_says_the_hub_cannot_be_reached(tmp_path, monkeypatch, capsys, how):
    import socket

    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_TOKEN", "hf_test_token_never_printed")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", how == "offline_mode")
    argv = ["--dataset", str(_tiny_dataset(tmp_path)), "--repo-id", "me/tiny-data"]
    argv += ["--license", "mit"]
    _push_fails(capsys, argv, 1, "cannot reach the Hugging Face Hub", "nothing was uploaded")
