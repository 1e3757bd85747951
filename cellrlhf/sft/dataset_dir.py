"""Read the dataset directory written by the data stage (``cellrlhf data build``).

Only the saved files are read (the data stage's code is never imported):

``manifest.json``, ``gene_vocab.json``, ``expression_decoder.json``, ``pretrain/`` (column
``text``) and ``sft/`` (splits with ``messages``, ``task``, ``perturbation``, ``cell_context``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from cellrlhf.cell2text.markup import CONTROL_PERT, split_perturbation
from cellrlhf.cell2text.vocab import VOCAB_FILENAME, GeneVocab
from cellrlhf.data.layout import MANIFEST_FILENAME

__all__ = [
    "MANIFEST_FILENAME",
    "DECODER_FILENAME",
    "SFT_COLUMNS",
    "DatasetDirError",
    "CellDatasetDir",
    "open_dataset_dir",
]

logger = logging.getLogger(__name__)

DECODER_FILENAME = "expression_decoder.json"
SFT_COLUMNS = ("messages", "task", "perturbation", "cell_context")
_CONTROL_LABELS = {"control", CONTROL_PERT}


class DatasetDirError(ValueError):
    """The dataset directory is missing a file or a column the training scripts need."""


@dataclass(frozen=True)
class CellDatasetDir:
    """A data-stage output directory.

    Attributes
    ----------
    path
        The directory.
    manifest
        Parsed ``manifest.json``.
    """

    path: Path
    manifest: dict

    @property
    def vocab_path(self) -> Path:
        return self.path / VOCAB_FILENAME

    @property
    def decoder_path(self) -> Path:
        return self.path / DECODER_FILENAME

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILENAME

    def vocab(self) -> GeneVocab:
        """The measured genes (``gene_vocab.json``)."""
        return GeneVocab.load(self.vocab_path)

    def decoder(self):
        """The expression decoder fitted on the training cells, or ``None`` when absent."""
        if not self.decoder_path.exists():
            return None
        from cellrlhf.cell2text.decoder import ExpressionDecoder

        return ExpressionDecoder.load(self.decoder_path)

    def perturbation_targets(self) -> list[str]:
        """Target genes of all perturbations in the data (they need gene tokens too).

        Read from the manifest's ``perturbation_targets`` list; when absent, collected from the
        ``perturbation`` column of the SFT splits.
        """
        listed = self.manifest.get("perturbation_targets")
        if listed is not None:
            return _unique_targets(listed)
        if not (self.path / "sft").exists():
            return []
        sft = self.load_sft()
        found: list[str] = []
        for split in sft.values():
            found.extend(p for p in split.unique("perturbation") if p)
        return _unique_targets(found)

    def load_pretrain(self):
        """The pretraining corpus: a ``Dataset`` or ``DatasetDict`` with a ``text`` column."""
        from datasets import DatasetDict, load_from_disk

        where = self.path / "pretrain"
        if not where.exists():
            raise DatasetDirError(
                f"{self.path} has no pretrain/ corpus; build it with `cellrlhf data build` (pretrain "
                "output enabled) or pass the dataset directory that has one."
            )
        data = load_from_disk(str(where))
        splits = data.values() if isinstance(data, DatasetDict) else [data]
        for split in splits:
            if "text" not in split.column_names:
                raise DatasetDirError(
                    f"{where} has no 'text' column (columns: {split.column_names}); it is not a pretraining "
                    "corpus written by the data stage."
                )
        return data

    def load_sft(self):
        """The instruction data: a ``DatasetDict`` with ``messages``, ``task``, ``perturbation``, ..."""
        from datasets import DatasetDict, load_from_disk

        where = self.path / "sft"
        if not where.exists():
            raise DatasetDirError(
                f"{self.path} has no sft/ data; build it with `cellrlhf data build` or pass the dataset "
                "directory that has one."
            )
        data = load_from_disk(str(where))
        if not isinstance(data, DatasetDict):
            raise DatasetDirError(
                f"{where} holds a single Dataset; expected train/validation/test splits."
            )
        for name, split in data.items():
            missing = [c for c in SFT_COLUMNS if c not in split.column_names]
            if missing:
                raise DatasetDirError(
                    f"{where} split {name!r} lacks column(s) {missing} (has {split.column_names}); it was not "
                    "written by this version of the data stage. Rebuild it with `cellrlhf data build`."
                )
        return data

    def load_rl(self):
        """The RL prompts with real reference profiles, or ``None`` when the directory has none."""
        from datasets import load_from_disk

        where = self.path / "rl"
        return load_from_disk(str(where)) if where.exists() else None


def open_dataset_dir(path: str | Path | None) -> CellDatasetDir:
    """Open and check a data-stage output directory.

    Raises
    ------
    DatasetDirError
        When the path is missing, or lacks ``manifest.json`` / ``gene_vocab.json``.
    """
    if not path:
        raise DatasetDirError(
            "no dataset given: pass --dataset_dir <directory written by `cellrlhf data build`> (or set "
            "`dataset_dir:` in the --config YAML)."
        )
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetDirError(
            f"dataset directory {root} does not exist; run `cellrlhf data build` first."
        )
    for name in (MANIFEST_FILENAME, VOCAB_FILENAME):
        if not (root / name).exists():
            raise DatasetDirError(
                f"{root} has no {name}: it is not a dataset directory written by `cellrlhf data build`."
            )
    manifest = json.loads((root / MANIFEST_FILENAME).read_text())
    return CellDatasetDir(root, manifest)


def _unique_targets(perturbations) -> list[str]:
    seen: dict[str, str] = {}
    for item in perturbations:
        for target in split_perturbation(str(item)):
            if target.lower() in _CONTROL_LABELS:
                continue
            seen.setdefault(target.upper(), target)
    return list(seen.values())
