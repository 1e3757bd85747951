"""The licence of an upload whose data does not name one: ask on a terminal, else an error.

A model or dataset card without a licence leaves users guessing whether they may use it.
``cellrlhf push`` takes ``--license``; without it, the licence of the training data
(``source.license`` of the data manifest) is used, and when the data names none either, the
user is asked (on a terminal) or told to pass ``--license`` (anywhere else).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from cellrlhf.data.layout import read_dataset_manifest
from cellrlhf.data.source_info import source_license

__all__ = ["data_license", "resolve_license", "LICENSE_NEEDED"]

LICENSE_NEEDED = (
    "the data's licence is unknown (its manifest's source names none): pass --license with a "
    "Hub licence id (e.g. cc-by-4.0, mit, apache-2.0, or other) so the card says on what terms "
    "others may use the upload."
)
_PROMPT = "The data's licence is unknown. Licence of this upload (e.g. cc-by-4.0, mit, other): "


def data_license(*, model: str | Path | None = None, dataset: str | Path | None = None):
    """The data's licence id from a model's ``data_manifest.json`` or a dataset's
    ``manifest.json`` (``None`` when the file or its ``source.license`` is missing)."""
    if model:
        manifest = _model_data_manifest(Path(model))
    else:
        manifest = read_dataset_manifest(dataset, required=False)
    return source_license(manifest.get("source")) if manifest is not None else None


def _model_data_manifest(model_dir: Path) -> dict | None:
    """The copy of the training data's manifest in a model directory (``None`` when missing)."""
    from cellrlhf.sft.model_dir import read_data_manifest

    return read_data_manifest(model_dir) or None


def resolve_license(
    given: str | None,
    *,
    model: str | Path | None = None,
    dataset: str | Path | None = None,
    stdin=None,
    ask: Callable[[str], str] | None = None,
) -> str | None:
    """``given``, else ``None`` when the data names a licence (the card uses it), else the
    answer of the user on a terminal.

    Raises
    ------
    ValueError
        The licence is unknown and ``stdin`` is not a terminal (or the user gave none).
    """
    if given:
        return given.strip().lower()
    if data_license(model=model, dataset=dataset):
        return None
    stdin = sys.stdin if stdin is None else stdin
    if not (hasattr(stdin, "isatty") and stdin.isatty()):
        raise ValueError(LICENSE_NEEDED)
    try:
        answer = (ask or input)(_PROMPT).strip().lower()
    except EOFError:
        answer = ""
    if not answer or " " in answer:
        raise ValueError(LICENSE_NEEDED)
    return answer
