"""Atomic checkpoints: complete or absent, never half-written; resuming finds the right one."""

from __future__ import annotations

import json
import logging

import pytest

from cellrlhf.sft.checkpoints import (
    CHECKPOINT_MARKER,
    STAGING_DIRNAME,
    CheckpointError,
    checkpoint_problem,
    clear_staging,
    latest_complete_checkpoint,
    list_checkpoints,
    publish_checkpoint,
    resolve_resume_checkpoint,
    write_checkpoint_marker,
)


def _checkpoint(root, step, *, complete=True, payload=b"weights"):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(payload)
    (path / "sub").mkdir()
    (path / "sub" / "state.json").write_text("{}")
    if complete:
        write_checkpoint_marker(path, step=step)
    return path


def test_marker_lists_files_and_sizes(tmp_path):
    path = _checkpoint(tmp_path, 3)
    marker = json.loads((path / CHECKPOINT_MARKER).read_text())
    assert marker["step"] == 3
    assert marker["files"] == {"model.safetensors": 7, "sub/state.json": 2}
    assert checkpoint_problem(path) is None


def test_truncated_missing_or_unmarked_checkpoints_are_rejected(tmp_path):
    truncated = _checkpoint(tmp_path, 1)
    (truncated / "model.safetensors").write_bytes(b"wei")
    assert "3 bytes, 7 were written" in checkpoint_problem(truncated)
    missing = _checkpoint(tmp_path, 2)
    (missing / "sub" / "state.json").unlink()
    assert "lacks sub/state.json" in checkpoint_problem(missing)
    unmarked = _checkpoint(tmp_path, 3, complete=False)
    assert "interrupted" in checkpoint_problem(unmarked)


def test_latest_complete_checkpoint_skips_broken_ones(tmp_path, caplog):
    _checkpoint(tmp_path, 2)
    good = _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 12, complete=False)
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-2",
        "checkpoint-10",
        "checkpoint-12",
    ]
    with caplog.at_level(logging.WARNING):
        assert latest_complete_checkpoint(tmp_path) == good
    assert "skipping checkpoint checkpoint-12" in caplog.text


@pytest.mark.parametrize("value", ["none", "", "false", False, "no"])
def test_resolve_fresh_start(tmp_path, value):
    _checkpoint(tmp_path, 2)
    assert resolve_resume_checkpoint(value, tmp_path) is None


@pytest.mark.parametrize("value", [None, "last", "latest", "true", True, "True"])
def test_resolve_latest(tmp_path, value):
    _checkpoint(tmp_path, 2)
    good = _checkpoint(tmp_path, 4)
    assert resolve_resume_checkpoint(value, tmp_path) == str(good)


def test_resolve_latest_without_checkpoints_starts_fresh(tmp_path):
    assert resolve_resume_checkpoint("last", tmp_path / "nothing") is None


def test_resolve_explicit_incomplete_checkpoint_raises_with_hint(tmp_path):
    good = _checkpoint(tmp_path, 2)
    broken = _checkpoint(tmp_path, 4, complete=False)
    assert resolve_resume_checkpoint(str(good), tmp_path) == str(good)
    with pytest.raises(CheckpointError, match="latest complete one is .*checkpoint-2"):
        resolve_resume_checkpoint(str(broken), tmp_path)


def test_publish_is_a_rename_and_replaces_same_step(tmp_path):
    staging = tmp_path / STAGING_DIRNAME
    staged = _checkpoint(staging, 5, payload=b"new")
    old = _checkpoint(tmp_path, 5, payload=b"old")
    publish_checkpoint(staged, old)
    assert not staged.exists()
    assert (old / "model.safetensors").read_bytes() == b"new"
    assert checkpoint_problem(old) is None
    assert not list(tmp_path.glob(f"{STAGING_DIRNAME}-old-*"))


def test_clear_staging_removes_interrupted_saves(tmp_path):
    _checkpoint(tmp_path / STAGING_DIRNAME, 7, complete=False)
    (tmp_path / f"{STAGING_DIRNAME}-old-checkpoint-3").mkdir()
    clear_staging(tmp_path)
    assert not (tmp_path / STAGING_DIRNAME).exists()
    assert not list(tmp_path.glob(f"{STAGING_DIRNAME}*"))
