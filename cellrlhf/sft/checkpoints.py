"""The one checkpoint contract: atomic writes, completeness, and which checkpoint a run resumes.

Every training stage (pretrain, SFT, reward, PPO, GRPO, RLOO) and the pipeline decide with the
functions here; nothing else in the package judges a ``checkpoint-N`` directory.

Writing. cellrlhf's own savers (SFT/pretrain trainer, PPO) write a checkpoint into
``<output_dir>/.staging/checkpoint-N`` on every process, then, once all processes are done,
stamp it with :data:`CHECKPOINT_MARKER` (the list of its files and their sizes) and rename it to
``<output_dir>/checkpoint-N`` in one ``rename``. A run killed while saving leaves at most a
staging directory, which is never resumed from and is removed by the next run.

Completeness (:func:`checkpoint_problem`), one rule for every stage: a checkpoint with a marker
is complete when every listed file is present with its recorded size; one without a marker
(written by a plain ``transformers``/TRL trainer: reward, GRPO, RLOO) when it holds
``trainer_state.json``, which the Trainer writes last.

Resuming (:func:`resolve_resume`). ``--resume_from_checkpoint`` takes

- nothing (the default): the last complete checkpoint of the output directory, found with
  :func:`last_complete_checkpoint` (``transformers``' ``get_last_checkpoint`` plus the rule
  above), else a fresh start; ``--overwrite_output_dir`` starts over instead;
- ``last`` (also ``latest``, ``true``; :data:`LATEST_ALIASES`): the same, even with
  ``--overwrite_output_dir``;
- ``none`` (also ``false``, ``no``, ``""``; :data:`START_OVER`): a fresh start;
- a ``checkpoint-N`` path: that checkpoint, which must be complete
  (:class:`CheckpointError` otherwise, naming the last complete one).

The pipeline asks :func:`last_complete_checkpoint` whether a stage left a checkpoint to resume.
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
    "last_complete_checkpoint",
    "resolve_resume",
    "publish_checkpoint",
    "clear_staging",
]

logger = logging.getLogger(__name__)

CHECKPOINT_MARKER = "cellrlhf_checkpoint.json"
STAGING_DIRNAME = ".staging"
# the words --resume_from_checkpoint takes (any case); a YAML ``null`` is the flag not given
LATEST_ALIASES = frozenset({"last", "latest", "true"})
START_OVER = frozenset({"none", "false", "no", ""})
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR


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


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or ``None`` when it is complete.

    Parameters
    ----------
    checkpoint
        A ``checkpoint-N`` directory.

    Returns
    -------
    str or None
        ``None`` when its :data:`CHECKPOINT_MARKER` lists every file with its size, or, without a
        marker (a plain ``transformers``/TRL trainer's checkpoint), when it holds
        ``trainer_state.json`` (the Trainer writes it last); else what is wrong.
    """
    root = Path(checkpoint)
    marker = root / CHECKPOINT_MARKER
    if not root.is_dir():
        return f"{root} is not a directory"
    if not marker.exists():
        if (root / TRAINER_STATE).is_file():
            return None
        return (
            f"{root} has neither {CHECKPOINT_MARKER} nor {TRAINER_STATE} (its save was interrupted)"
        )
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
    """``checkpoint-N`` directories of ``output_dir``, by step (``checkpoint-9`` before ``-10``)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def last_complete_checkpoint(output_dir: str | Path | None) -> Path | None:
    """The highest-step complete checkpoint of ``output_dir`` (``None``: there is none).

    ``transformers``' :func:`~transformers.trainer_utils.get_last_checkpoint` names the newest
    ``checkpoint-N``; when :func:`checkpoint_problem` finds it incomplete it is skipped with a
    warning and the next older one is tried. This is what a training stage resumes from by
    default, and what the pipeline passes to a resumable stage it re-runs.

    Parameters
    ----------
    output_dir
        A run's output directory; ``None`` or a missing directory hold no checkpoint.
    """
    if output_dir is None or not list_checkpoints(output_dir):
        return None  # before importing transformers: the pipeline asks this of every stage
    from transformers.trainer_utils import get_last_checkpoint

    newest = Path(get_last_checkpoint(str(output_dir)))
    for checkpoint in [newest, *reversed(list_checkpoints(output_dir)[:-1])]:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        logger.warning("skipping checkpoint %s: %s", checkpoint.name, problem)
    return None


def _is_start_over(value) -> bool:
    return value is False or (value is not None and str(value).strip().lower() in START_OVER)


def _is_latest(value) -> bool:
    return value is True or str(value).strip().lower() in LATEST_ALIASES


def _resuming(checkpoint: Path) -> str:
    logger.info(
        "resuming from %s (step %s); pass --resume_from_checkpoint none or "
        "--overwrite_output_dir to start over",
        checkpoint,
        checkpoint.name.split("-")[-1],
    )
    return str(checkpoint)


def resolve_resume(
    resume_from_checkpoint: str | bool | None,
    output_dir: str | Path,
    *,
    overwrite_output_dir: bool = False,
) -> str | None:
    """Turn ``--resume_from_checkpoint`` into a checkpoint path (or ``None`` to start fresh).

    Parameters
    ----------
    resume_from_checkpoint
        ``None`` (the flag not given): the last complete checkpoint of ``output_dir`` when
        there is one (the log says so), else a fresh start. A word of :data:`START_OVER`
        (``none``): start fresh. A word of :data:`LATEST_ALIASES` (``last``): the last complete
        checkpoint (fresh start, with a warning, when there is none). Anything else is a path to
        a checkpoint, which must be complete.
    output_dir
        The run's output directory.
    overwrite_output_dir
        ``--overwrite_output_dir``: start fresh unless ``resume_from_checkpoint`` asks for a
        checkpoint (by path or ``last``).

    Raises
    ------
    CheckpointError
        When a checkpoint named by path is missing or incomplete.
    """
    value = resume_from_checkpoint
    if value is None and overwrite_output_dir:
        if list_checkpoints(output_dir):
            logger.info("--overwrite_output_dir: starting over in %s", output_dir)
        return None
    if _is_start_over(value):
        return None
    if value is None or _is_latest(value):
        last = last_complete_checkpoint(output_dir)
        if last is None:
            if value is not None or list_checkpoints(output_dir):
                logger.warning(
                    "no complete checkpoint in %s to resume from; training starts fresh.",
                    output_dir,
                )
            return None
        return _resuming(last)
    problem = checkpoint_problem(value)
    if problem is not None:
        last = last_complete_checkpoint(Path(value).parent)
        hint = f" The last complete one is {last}." if last else ""
        raise CheckpointError(
            f"cannot resume from {value!r}: {problem}.{hint} Pass a complete checkpoint-N "
            f"directory, --resume_from_checkpoint last (the last complete checkpoint of "
            f"output_dir) or --resume_from_checkpoint none (start over)."
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
