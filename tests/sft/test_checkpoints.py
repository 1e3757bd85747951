"""Atomic checkpoints: complete or absent, never half-written; resuming finds the right one.

One rule for every stage (SFT, reward, PPO, GRPO/RLOO, the pipeline): a marked checkpoint is
complete when its marker's files are all there with their sizes; an unmarked one (plain
transformers/TRL trainers) when it holds trainer_state.json.
"""

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
    last_complete_checkpoint,
    list_checkpoints,
    publish_checkpoint,
    resolve_resume,
    write_checkpoint_marker,
)


def _checkpoint(root, step, *, complete=True, payload=b"weights"):
    """A cellrlhf checkpoint (marked when ``complete``)."""
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(payload)
    (path / "sub").mkdir()
    (path / "sub" / "state.json").write_text("{}")
    if complete:
        write_checkpoint_marker(path, step=step)
    return path


def _trl_checkpoint(root, step, *, complete=True):
    """A plain transformers/TRL checkpoint: no marker; trainer_state.json is written last."""
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
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


def test_last_complete_checkpoint_skips_broken_ones(tmp_path, caplog):
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
        assert last_complete_checkpoint(tmp_path) == good
    assert "skipping checkpoint checkpoint-12" in caplog.text


def test_plain_trainer_checkpoints_are_complete_with_their_trainer_state(tmp_path):
    done = _trl_checkpoint(tmp_path, 3)
    killed = _trl_checkpoint(tmp_path, 6, complete=False)
    assert checkpoint_problem(done) is None
    assert "neither cellrlhf_checkpoint.json nor trainer_state.json" in checkpoint_problem(killed)
    assert last_complete_checkpoint(tmp_path) == done


def test_a_marker_wins_over_trainer_state(tmp_path):
    # a marked checkpoint is judged by its marker even though trainer_state.json is there
    path = _checkpoint(tmp_path, 5)
    (path / "trainer_state.json").write_text("{}")
    write_checkpoint_marker(path, step=5)
    (path / "model.safetensors").write_bytes(b"w")
    assert "1 bytes, 7 were written" in checkpoint_problem(path)
    assert last_complete_checkpoint(tmp_path) is None


def test_numeric_order_agrees_with_transformers(tmp_path):
    from transformers.trainer_utils import get_last_checkpoint

    for step in (9, 10, 100):
        _checkpoint(tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-9",
        "checkpoint-10",
        "checkpoint-100",
    ]
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-100"
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-100")


def test_staging_and_non_checkpoint_names_are_never_candidates(tmp_path):
    _checkpoint(tmp_path / STAGING_DIRNAME, 9)  # complete, but still in staging
    (tmp_path / "checkpoint-7.tmp").mkdir()
    (tmp_path / "checkpoint-8").write_text("a file, not a directory")
    assert last_complete_checkpoint(tmp_path) is None
    assert last_complete_checkpoint(None) is None
    assert last_complete_checkpoint(tmp_path / "missing") is None


@pytest.mark.parametrize("value", ["none", "None", " NONE ", "", "false", False, "no"])
def test_resolve_fresh_start(tmp_path, value):
    _checkpoint(tmp_path, 2)
    assert resolve_resume(value, tmp_path) is None


@pytest.mark.parametrize("value", [None, "last", "latest", "LAST", "true", True, "True"])
def test_resolve_latest(tmp_path, value):
    _checkpoint(tmp_path, 2)
    good = _checkpoint(tmp_path, 4)
    _checkpoint(tmp_path, 6, complete=False)
    assert resolve_resume(value, tmp_path) == str(good)


@pytest.mark.parametrize("value", [None, "last"])
def test_resolve_latest_without_checkpoints_starts_fresh(tmp_path, value):
    assert resolve_resume(value, tmp_path / "nothing") is None
    assert resolve_resume(value, tmp_path) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("none", None), ("last", "checkpoint-4"), ("path", "checkpoint-2")],
)
def test_overwrite_starts_over_unless_a_checkpoint_is_asked_for(tmp_path, value, expected):
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4)
    value = str(tmp_path / "checkpoint-2") if value == "path" else value
    got = resolve_resume(value, tmp_path, overwrite_output_dir=True)
    assert got == (None if expected is None else str(tmp_path / expected))


def test_resolve_explicit_incomplete_checkpoint_raises_with_hint(tmp_path):
    good = _checkpoint(tmp_path, 2)
    broken = _checkpoint(tmp_path, 4, complete=False)
    assert resolve_resume(str(good), tmp_path) == str(good)
    with pytest.raises(CheckpointError, match="last complete one is .*checkpoint-2"):
        resolve_resume(str(broken), tmp_path)


@pytest.mark.parametrize("word", ["auto", "yes", "1", "latest-one"])
def test_an_unknown_word_is_refused_naming_the_accepted_ones(tmp_path, word):
    _checkpoint(tmp_path, 2)
    with pytest.raises(CheckpointError, match=f"cannot resume from '{word}'.*last.*none"):
        resolve_resume(word, tmp_path)


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
