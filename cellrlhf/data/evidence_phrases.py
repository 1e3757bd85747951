"""The lines of a measured-evidence block (``templates/evidence.json``) and their checks.

Shared by the build (:class:`~cellrlhf.data.evidence.EvidenceBuilder`) and the saved
:class:`~cellrlhf.data.evidence_index.EvidenceIndex`, which carries the phrases it was written
with. ``sft.templates_dir`` may hold a replacement ``evidence.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cellrlhf.data.evidence_config import EvidenceConfig, EvidenceError

__all__ = [
    "PHRASE_KEYS",
    "CHANGE_PHRASE_KEYS",
    "POOLED_PHRASE_KEYS",
    "EvidencePhrases",
    "load_evidence_phrases",
    "phrases_from_lines",
    "check_change_phrases",
]

_FORMAT = "cellrlhf.evidence_phrases"
PHRASE_KEYS = (
    "header",
    "average_response",
    "average_response_missing",
    "component",
    "component_missing",
    "other_context",
    "other_contexts_missing",
    "neighbour",
    "neighbours_missing",
)
# needed only by ``evidence.write: change`` (older phrase files without it still load)
CHANGE_PHRASE_KEYS = ("change", "change_none")
# needed only by ``evidence.pool_other_contexts``
POOLED_PHRASE_KEYS = ("other_contexts_pooled",)


@dataclass(frozen=True)
class EvidencePhrases:
    """The lines of an evidence block (``templates/evidence.json``).

    Attributes
    ----------
    version
        The file's ``version``.
    sha256
        Digest of the file's bytes (recorded in the manifest and the evidence index).
    lines
        Phrase name -> format string (:data:`PHRASE_KEYS`, and :data:`CHANGE_PHRASE_KEYS` when
        the file has them).
    """

    version: int
    sha256: str
    lines: dict[str, str]

    def line(self, key: str, **values) -> str:
        """The phrase ``key`` filled with ``values``."""
        return self.lines[key].format(**values)


def phrases_from_lines(
    lines: Mapping, *, version: int, sha256: str, where: str = "evidence.json"
) -> EvidencePhrases:
    """:class:`EvidencePhrases` of a mapping of phrases (the required ones checked).

    Raises
    ------
    EvidenceError
        A required phrase is missing or not a string.
    """
    missing = [k for k in PHRASE_KEYS if not isinstance(lines.get(k), str)]
    if missing:
        raise EvidenceError(f"{where} lacks the phrase(s) {missing}.")
    kept = {k: lines[k] for k in PHRASE_KEYS}
    optional = CHANGE_PHRASE_KEYS + POOLED_PHRASE_KEYS
    kept.update({k: lines[k] for k in optional if isinstance(lines.get(k), str)})
    return EvidencePhrases(int(version), str(sha256), kept)


def load_evidence_phrases(directory: str | Path | None = None) -> EvidencePhrases:
    """Load ``evidence.json`` (packaged, or from ``directory`` when it has one)."""
    path = Path(directory) / "evidence.json" if directory else None
    if path is not None and path.exists():
        raw = path.read_bytes()
    else:
        raw = resources.files("cellrlhf.data").joinpath("templates", "evidence.json").read_bytes()
    payload = json.loads(raw)
    if payload.get("format") != _FORMAT:
        raise EvidenceError(f"evidence.json: format must be {_FORMAT!r}.")
    return phrases_from_lines(
        payload, version=payload["version"], sha256=hashlib.sha256(raw).hexdigest()
    )


def check_change_phrases(config: EvidenceConfig, phrases: EvidencePhrases) -> None:
    """Raise unless ``phrases`` can write ``config`` (``write: change`` and
    ``pool_other_contexts`` need their phrases)."""
    for option, needed, keys in (
        ("evidence.write: change", config.write == "change", CHANGE_PHRASE_KEYS),
        ("evidence.pool_other_contexts", config.pool_other_contexts, POOLED_PHRASE_KEYS),
    ):
        missing = [k for k in keys if k not in phrases.lines] if needed else []
        if missing:
            raise EvidenceError(
                f"{option} needs the phrase(s) {missing} in evidence.json; "
                "copy them from the packaged cellrlhf/data/templates/evidence.json."
            )
