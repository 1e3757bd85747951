"""Silence third-party messages that say nothing to a cellrlhf user, so the ones that matter show.

Each entry is a known message of a dependency that is harmless in cellrlhf's use of it (checked
for the pinned versions): a CPU run warned that pinned memory needs an accelerator, TRL 1.12
setting transformers' deprecated ``gradient_checkpointing`` argument, DeepSpeed announcing that
it falls back to the CPU, transformers' ``past_key_values`` rename during ``generate``. Anything
else, and any warning cellrlhf itself raises, still shows. ``CELLRLHF_DEBUG=1`` shows them all.

Progress bars: a stage shows its own (training steps, cells built, cells sampled), not the
libraries' bars for every dataset map, save and weight load underneath it
(``HF_DATASETS_DISABLE_PROGRESS_BARS`` and ``HF_HUB_DISABLE_PROGRESS_BARS`` default to on; a value
you set yourself wins). They must be set before ``datasets`` / ``transformers`` are imported,
which :func:`quiet_known_noise` does at the start of every ``cellrlhf`` command.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

__all__ = ["KNOWN_WARNINGS", "KNOWN_LOG_MESSAGES", "LIBRARY_PROGRESS_BARS", "quiet_known_noise"]

# (category, start of the message) of Python warnings
KNOWN_WARNINGS = (
    (UserWarning, "'pin_memory' argument is set as true but no accelerator is found"),
    (FutureWarning, "`gradient_checkpointing` is deprecated and will be removed"),
)
# environment switches of the libraries' own progress bars (1: off)
LIBRARY_PROGRESS_BARS = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")
# logger name -> start of the message of log records
KNOWN_LOG_MESSAGES = {
    "DeepSpeed": ("Setting accelerator to CPU.",),
    "transformers.utils.generic": ("`past_key_values`/`cache_params` are deprecated",),
}


class _DropKnown(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.starts)


def quiet_known_noise() -> None:
    """Install the filters (idempotent; nothing when ``CELLRLHF_DEBUG`` is set)."""
    if os.environ.get("CELLRLHF_DEBUG", "").strip() not in {"", "0"}:
        return
    for name in LIBRARY_PROGRESS_BARS:
        os.environ.setdefault(name, "1")
    for category, start in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=f"^{re.escape(start)}", category=category)
    for name, starts in KNOWN_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown(starts))
