"""One clear line instead of a traceback for the errors a person can act on.

Every ``cellrlhf`` subcommand and every stage script (``sft.py``, ``ppo.py``, ...) runs through
:func:`run_guarded`: a mistake in the input (a project error, a missing file, malformed YAML, a
truncated .h5ad, a value of the wrong type, a model path that does not exist) prints
``<prog>: error: <message>`` and exits with status 2. ``--debug`` or ``CELLRLHF_DEBUG=1`` shows
the full traceback instead; any other exception (a bug) keeps its traceback.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "DEBUG_ENV",
    "DEBUG_FLAG",
    "debug_requested",
    "end_distributed",
    "error_message",
    "run_guarded",
    "stage_script_main",
]

DEBUG_ENV = "CELLRLHF_DEBUG"
DEBUG_FLAG = "--debug"
_HINT = f"(run with {DEBUG_FLAG} or {DEBUG_ENV}=1 for the traceback)"
_REPO_ID = re.compile(r"Repo id must .*?: '([^']*)'", re.S)


def debug_requested(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """Whether ``--debug`` is in ``argv`` or ``$CELLRLHF_DEBUG`` is set; ``argv`` without it."""
    argv = list(argv)
    flag = DEBUG_FLAG in argv
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in {"", "0", "false", "no"}
    return flag or env, [a for a in argv if a != DEBUG_FLAG]


def _yaml_message(err) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    where = "YAML"
    if mark is not None:
        name = mark.name if mark.name and not mark.name.startswith("<") else "YAML"
        where = f"{name}:{mark.line + 1}:{mark.column + 1}"
    detail = f"{context}, {problem}" if context else problem
    return f"{where}: malformed YAML: {detail}"


def _model_path_message(err) -> str | None:
    match = _REPO_ID.search(str(err))
    if match is None:
        return None
    name = match.group(1)
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/") or name.count("/") > 1:
        return (
            f"model directory {name} does not exist (and {name!r} is not a Hugging Face Hub "
            "repo id either); pass the directory a training stage wrote, or a Hub id like "
            "'org/model'."
        )
    return f"{name!r} is neither a local directory nor a valid Hugging Face Hub repo id."


def _is_project_error(err: BaseException) -> bool:
    return any(
        cls.__module__.split(".")[0] == "cellrlhf" and issubclass(cls, Exception)
        for cls in type(err).__mro__
    )


def error_message(err: BaseException) -> str | None:
    """The one-line message of an error the user can act on, ``None`` for anything else.

    Expected: cellrlhf's own errors, ``ValueError`` (bad values), missing files and directories,
    malformed YAML, damaged .h5ad files (h5py / anndata read errors) and model paths that are
    neither a directory nor a Hub repo id.
    """
    import yaml

    if isinstance(err, yaml.YAMLError):
        return _yaml_message(err)
    model_path = _model_path_message(err) if isinstance(err, (ValueError, OSError)) else None
    if model_path is not None:
        return model_path
    from cellrlhf.data.loading import read_error

    damaged = read_error(_h5_path(err), err)
    if damaged is not None:
        return str(damaged)
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return (
            " ".join(str(err).split())
            if err.filename is None
            else f"{err.strerror}: {err.filename}"
        )
    if isinstance(err, PermissionError):
        return f"permission denied: {err.filename or err}"
    if isinstance(err, ValueError) or _is_project_error(err):
        return " ".join(str(err).split()) or type(err).__name__
    return None


def _h5_path(err: BaseException) -> str:
    """The .h5ad named by a read error's filename or message, else a generic phrase."""
    filename = getattr(err, "filename", None)
    if filename:
        return str(filename)
    found = re.search(r"[\w./~-]+\.h5ad", str(err))
    return found.group(0) if found else "an .h5ad file"


def run_guarded(prog: str, run: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """Run ``run(argv)`` and turn expected errors into ``<prog>: error: <message>`` (status 2).

    Parameters
    ----------
    prog
        Name shown before the message (``"cellrlhf data"``, ``"sft.py"``).
    run
        The command's ``cli(argv) -> int``.
    argv
        Its arguments; ``--debug`` is removed from them and shows tracebacks.
    """
    debug, argv = debug_requested(argv)
    try:
        if debug:
            os.environ[DEBUG_ENV] = "1"  # commands that catch their own errors re-raise them
            return int(run(argv) or 0)
        try:
            return int(run(argv) or 0)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # noqa: BLE001 - anything unexpected is re-raised below
            message = error_message(err)
            if message is None:
                raise
            print(f"{prog}: error: {message}\n  {_HINT}", file=sys.stderr)
            return 2
    finally:
        end_distributed()


def end_distributed() -> None:
    """Destroy the default process group a distributed stage opened (gloo, NCCL).

    A process that exits with its group alive leaves the backend's threads to be torn down with
    the interpreter; under load that can abort a rank after its work was saved ("terminate called
    without an active exception", exit -6), failing the whole launch. Every command run through
    :func:`run_guarded` ends with this; a process that never imported torch is left alone.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def stage_script_main(command: str, argv: Sequence[str] | None = None) -> int:
    """``sft.py`` / ``ppo.py`` / ...: run ``cellrlhf <command>`` under :func:`run_guarded`."""
    from cellrlhf.cli import main

    argv = list(sys.argv[1:] if argv is None else argv)
    return main([command, *argv], prog=Path(sys.argv[0]).name or command)
