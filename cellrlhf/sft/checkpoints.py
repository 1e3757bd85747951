"""Atomic training checkpoints, and finding the one to resume from.

A checkpoint is written into ``<output_dir>/.staging/checkpoint-N`` by every process, then, once
all processes are done, stamped with :data:`CHECKPOINT_MARKER` (the list of its files and their
sizes) and renamed to ``<output_dir>/checkpoint-N`` in one ``rename``. A run killed while saving
leaves at most a staging directory, which is never resumed from and is removed by the next run:
``checkpoint-N`` directories are always complete.

A run resumes by default: when ``--resume_from_checkpoint`` is not given and the output
directory holds a complete checkpoint, training continues from the latest one (and says so);
``--resume_from_checkpoint none`` or ``--overwrite_output_dir`` start over.

Resuming checks the marker again (every listed file present with its recorded size), so a
checkpoint damaged later, or one copied half-way, is skipped with a warning when the latest is
requested, and refused when named explicitly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

__all__ = [
    "CHECKPOINT_MARKER",
    "STAGING_DIRNAME",
    "LATEST_ALIASES",
    "START_OVER",
    "CheckpointError",
    "write_checkpoint_marker",
    "checkpoint_problem",
    "list_checkpoints",
    "latest_complete_checkpoint",
    "resolve_resume_checkpoint",
    "publish_checkpoint",
    "clear_staging",
]

logger = logging.getLogger(__name__)

CHECKPOINT_MARKER = "cellrlhf_checkpoint.json"
STAGING_DIRNAME = ".staging"
LATEST_ALIASES = {"true", "last", "latest", "yes", "1"}
START_OVER = {"", "false", "no", "0", "none", "null"}
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint asked for cannot be resumed from."""


def write_checkpoint_marker(checkpoint: str | Path, *, step: int) -> Path:
    """Flush every file of ``checkpoint`` to disk, then record them with their sizes, atomically."""
    root = Path(checkpoint)
    files = {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != CHECKPOINT_MARKER
    }
    for name in files:
        _fsync_file(root / name)
    marker = root / CHECKPOINT_MARKER
    _atomic_write_text(
        marker, json.dumps({"format": "cellrlhf.checkpoint", "step": step, "files": files})
    )
    return marker


def checkpoint_problem(checkpoint: str | Path, *, require_marker: bool = True) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or ``None`` when it is complete.

    Parameters
    ----------
    checkpoint
        A ``checkpoint-N`` directory.
    require_marker
        Checkpoints of cellrlhf's own trainer carry :data:`CHECKPOINT_MARKER`. Without it
        (``False``: checkpoints written by a plain ``transformers`` / TRL trainer), a checkpoint
        without a marker counts as complete when it holds ``trainer_state.json``, which the
        Trainer writes last.
    """
    root = Path(checkpoint)
    marker = root / CHECKPOINT_MARKER
    if not root.is_dir():
        return f"{root} is not a directory"
    if not marker.exists():
        if not require_marker:
            if (root / TRAINER_STATE).is_file():
                return None
            return f"{root} has no {TRAINER_STATE} (its save was interrupted)"
        return f"{root} has no {CHECKPOINT_MARKER} (its save was interrupted, or it was not written by cellrlhf)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as err:
        return f"{marker} is unreadable ({err})"
    for name, size in files.items():
        path = root / name
        if not path.is_file():
            return f"{root} lacks {name}"
        if path.stat().st_size != size:
            return f"{root}/{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` directories of ``output_dir``, by step."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def latest_complete_checkpoint(
    output_dir: str | Path, *, require_marker: bool = True
) -> Path | None:
    """The highest-step complete checkpoint; incomplete ones are skipped with a warning.

    The candidates are the ``checkpoint-N`` directories ``transformers``'
    :func:`~transformers.trainer_utils.get_last_checkpoint` would consider, newest first, each
    checked with :func:`checkpoint_problem`.
    """
    from transformers.trainer_utils import get_last_checkpoint

    if not Path(output_dir).is_dir() or get_last_checkpoint(str(output_dir)) is None:
        return None
    for checkpoint in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(checkpoint, require_marker=require_marker)
        if problem is None:
            return checkpoint
        logger.warning("skipping checkpoint %s: %s", checkpoint.name, problem)
    return None


def _is_start_over(value) -> bool:
    return value is False or str(value).strip().lower() in START_OVER


def _resuming(checkpoint: Path) -> str:
    logger.info(
        "resuming from %s (step %s); pass --resume_from_checkpoint none or "
        "--overwrite_output_dir to start over",
        checkpoint,
        checkpoint.name.split("-")[-1],
    )
    return str(checkpoint)


def resolve_resume_checkpoint(
    value: str | bool | None,
    output_dir: str | Path,
    *,
    overwrite_output_dir: bool = False,
    require_marker: bool = True,
) -> str | None:
    """Turn ``--resume_from_checkpoint`` into a checkpoint path (or ``None`` to start fresh).

    Parameters
    ----------
    value
        ``None`` (the flag not given): the latest complete checkpoint of ``output_dir`` when
        there is one (the log says so), else a fresh start. ``none``/``false``/``""``: start
        fresh. ``true``/``last``/``latest``: the latest complete checkpoint (fresh start, with a
        warning, when there is none). A path: that checkpoint, which must be complete.
    output_dir
        The run's output directory.
    overwrite_output_dir
        ``--overwrite_output_dir``: start fresh unless a checkpoint is named explicitly.
    require_marker
        See :func:`checkpoint_problem`.

    Raises
    ------
    CheckpointError
        When an explicitly named checkpoint is missing or incomplete.
    """
    if value is None:
        if overwrite_output_dir:
            if list_checkpoints(output_dir):
                logger.info("--overwrite_output_dir: starting over in %s", output_dir)
            return None
        latest = latest_complete_checkpoint(output_dir, require_marker=require_marker)
        if latest is None:
            if list_checkpoints(output_dir):
                logger.warning(
                    "no complete checkpoint in %s to resume from; training starts fresh.",
                    output_dir,
                )
            return None
        return _resuming(latest)
    if _is_start_over(value):
        return None
    if value is True or str(value).strip().lower() in LATEST_ALIASES:
        latest = latest_complete_checkpoint(output_dir, require_marker=require_marker)
        if latest is None:
            logger.warning(
                "no complete checkpoint in %s to resume from; training starts fresh.", output_dir
            )
            return None
        return _resuming(latest)
    problem = checkpoint_problem(value, require_marker=require_marker)
    if problem is not None:
        parent = Path(value).parent
        latest = (
            latest_complete_checkpoint(parent, require_marker=require_marker)
            if parent.is_dir()
            else None
        )
        hint = f" The latest complete one is {latest}." if latest else ""
        raise CheckpointError(
            f"cannot resume from {value}: {problem}.{hint} Pass --resume_from_checkpoint last."
        )
    return str(value)


def publish_checkpoint(staged: str | Path, final: str | Path) -> Path:
    """Move a fully written, marked checkpoint from staging to its final name in one rename."""
    staged, final = Path(staged), Path(final)
    if final.exists():  # the same step saved again (e.g. a resumed run): swap, never mix
        trash = final.with_name(f"{STAGING_DIRNAME}-old-{final.name}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
        os.replace(staged, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staged, final)
    _fsync_dir(final.parent)
    return final


def clear_staging(output_dir: str | Path) -> None:
    """Remove leftovers of saves that were interrupted (``.staging``)."""
    root = Path(output_dir)
    leftovers = (
        [root / STAGING_DIRNAME, *root.glob(f"{STAGING_DIRNAME}-old-*")] if root.is_dir() else []
    )
    for path in leftovers:
        if path.exists():
            logger.warning("removing %s left by an interrupted save", path)
            shutil.rmtree(path, ignore_errors=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
