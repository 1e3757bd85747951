"""The ``cellrlhf pretrain`` / ``cellrlhf sft`` door: parse, run, and turn known mistakes into messages."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

__all__ = ["run_cli"]

logger = logging.getLogger(__name__)


def _user_errors() -> tuple[type[BaseException], ...]:
    from cellrlhf.data.layout import DatasetDirError
    from cellrlhf.sft.checkpoints import CheckpointError
    from cellrlhf.sft.model_dir import ModelDirError

    return (DatasetDirError, CheckpointError, ModelDirError, FileNotFoundError)


def run_cli(name: str, make_parser: Callable, main: Callable, argv: Sequence[str]) -> int:
    """Parse ``argv`` with ``make_parser()`` (``--config`` YAML + flag overrides) and run ``main``.

    Mistakes in the user's input (missing dataset directory, incomplete checkpoint, ...) print one
    clear line and return 2 instead of a traceback (``--debug`` / ``CELLRLHF_DEBUG=1`` re-raise
    them); other expected errors are reported by :func:`cellrlhf.cli_errors.run_guarded`.
    """
    from cellrlhf.cli_errors import debug_requested

    debug, argv = debug_requested(argv)
    parser = make_parser(prog=f"cellrlhf {name}")
    try:
        args = parser.parse_args_and_config(list(argv))
    except ValueError as err:
        if debug:
            raise
        print(f"cellrlhf {name}: error: {err}", file=sys.stderr)
        return 2
    try:
        output = main(*args)
    except _user_errors() as err:
        if debug:
            raise
        print(f"cellrlhf {name}: error: {err}", file=sys.stderr)
        return 2
    logger.info("%s finished: %s", name, output)
    return 0
