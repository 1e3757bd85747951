"""The saved dataset directory: file names, column types, and the one reader every stage uses.

:func:`open_dataset_dir` checks the manifest and returns a :class:`DatasetDir` (parts read on
first use); anything missing or malformed is a :class:`DatasetDirError`.

::

    <out>/manifest.json            config, fingerprint, source checksums, counts, "simulated"
    <out>/gene_vocab.json          GeneVocab of the measured genes
    <out>/expression_decoder.json  ExpressionDecoder fitted on training cells only
    <out>/splits.json              split manifest (held-out sets, cells of every split)
    <out>/evidence_index.json      (with an ``evidence:`` section) the EvidenceIndex: every
                                   text of the prompts' measured-evidence blocks, to compose the
                                   block of any (perturbation, context) at inference; model
                                   directories carry a copy (docs/evidence.md)
    <out>/pretrain/                Dataset: text, cell_id
    <out>/sft/                     DatasetDict train/validation/test: messages, task,
                                   perturbation, cell_context, cell_ids, template
    <out>/rl/                      DatasetDict train/test: prompt, perturbation, cell_context,
                                   perturbation_type, split_kind, reference_perturbed,
                                   reference_control, decoded_control, reference_sentences,
                                   reference_cell_ids, de_genes_up, de_genes_down, n_cells,
                                   n_control_cells, control_split, template
    <out>/parquet/<part>/<split>.parquet   (optional) the same tables as Parquet
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

__all__ = [
    "MANIFEST_FILENAME",
    "SPLITS_FILENAME",
    "EVIDENCE_INDEX_FILENAME",
    "MANIFEST_FORMAT",
    "pretrain_features",
    "sft_features",
    "rl_features",
    "SFT_COLUMNS",
    "DatasetDirError",
    "DatasetDir",
    "open_dataset_dir",
    "read_dataset_manifest",
]

MANIFEST_FILENAME = "manifest.json"
SPLITS_FILENAME = "splits.json"
EVIDENCE_INDEX_FILENAME = "evidence_index.json"
MANIFEST_FORMAT = "cellrlhf.dataset"
SFT_COLUMNS = ("messages", "task", "perturbation", "cell_context")


def pretrain_features():
    from datasets import Features, Value

    return Features({"text": Value("string"), "cell_id": Value("string")})


def _messages():
    from datasets import Value

    return [{"role": Value("string"), "content": Value("string")}]


def sft_features():
    from datasets import Features, Value

    return Features(
        {
            "messages": _messages(),
            "task": Value("string"),
            "perturbation": Value("string"),
            "cell_context": Value("string"),
            "cell_ids": [Value("string")],
            "template": Value("string"),
        }
    )


def rl_features():
    from datasets import Features, Value

    return Features(
        {
            "prompt": _messages(),
            "control_prompt": _messages(),
            "perturbation": Value("string"),
            "cell_context": Value("string"),
            "perturbation_type": Value("string"),
            "split_kind": Value("string"),
            "reference_perturbed": [Value("float32")],
            "reference_control": [Value("float32")],
            "decoded_control": [Value("float32")],
            "reference_sentences": [Value("string")],
            "reference_cell_ids": [Value("string")],
            "de_genes_up": [Value("string")],
            "de_genes_down": [Value("string")],
            "n_cells": Value("int64"),
            "n_control_cells": Value("int64"),
            "control_split": Value("string"),
            "template": Value("string"),
        }
    )


class DatasetDirError(ValueError):
    """The dataset directory is missing, or lacks a file, a part or a column a stage needs."""


@dataclass(frozen=True)
class DatasetDir:
    """A directory written by :func:`cellrlhf.data.build.build_datasets`, opened by
    :func:`open_dataset_dir`; the parts are read (memory-mapped) on first use.

    Attributes
    ----------
    path
        The directory.
    manifest
        Parsed ``manifest.json``.
    splits
        Parsed ``splits.json`` (held-out sets, cells of every split).
    pretrain, sft, rl
        The ``datasets`` objects of each part, or ``None`` when that part was not built; the
        pretraining corpus is checked for ``text``, the SFT splits for :data:`SFT_COLUMNS`.
    """

    path: Path
    manifest: dict

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILENAME

    @property
    def vocab_path(self) -> Path:
        from cellrlhf.cell2text.vocab import VOCAB_FILENAME

        return self.path / VOCAB_FILENAME

    @property
    def decoder_path(self) -> Path:
        from cellrlhf.cell2text.decoder import DECODER_FILENAME

        return self.path / DECODER_FILENAME

    @property
    def evidence_index_path(self) -> Path:
        return self.path / EVIDENCE_INDEX_FILENAME

    def evidence_index(self):
        """The :class:`~cellrlhf.data.evidence_index.EvidenceIndex` of the build's evidence
        blocks (``evidence_index.json``); ``None`` when the build had no evidence.

        Raises
        ------
        DatasetDirError
            The manifest records evidence but the file is missing (a build of an older
            version): rebuild it.
        EvidenceError
            The file is not a readable evidence index.
        """
        from cellrlhf.data.evidence_index import EvidenceIndex

        if self.evidence_index_path.is_file():
            return EvidenceIndex.load(self.evidence_index_path)
        if self.manifest.get("evidence"):
            raise DatasetDirError(
                f"{self.path} was built with evidence but has no {EVIDENCE_INDEX_FILENAME} (an "
                "older cellrlhf); rebuild it with `cellrlhf data build` to write it."
            )
        return None

    @cached_property
    def splits(self) -> dict:
        path = self.path / SPLITS_FILENAME
        if not path.is_file():
            raise DatasetDirError(
                f"{self.path} has no {SPLITS_FILENAME}: rebuild it with `cellrlhf data build`."
            )
        return json.loads(path.read_text())

    def vocab(self):
        """The measured genes (``gene_vocab.json``): a :class:`~cellrlhf.cell2text.vocab.GeneVocab`."""
        from cellrlhf.cell2text.vocab import GeneVocab

        if not self.vocab_path.exists():
            raise DatasetDirError(
                f"{self.path} has no {self.vocab_path.name}: it is not a dataset directory written "
                "by `cellrlhf data build`."
            )
        return GeneVocab.load(self.vocab_path)

    def decoder(self, *, required: bool = True):
        """The :class:`~cellrlhf.cell2text.decoder.ExpressionDecoder` fitted on the training
        cells; without ``expression_decoder.json``: ``None``, or (``required``) an error."""
        if not self.decoder_path.exists():
            if not required:
                return None
            raise DatasetDirError(
                f"{self.path} has no {self.decoder_path.name}: fidelity cannot be measured; "
                "rebuild it with `cellrlhf data build`."
            )
        from cellrlhf.cell2text.decoder import ExpressionDecoder

        return ExpressionDecoder.load(self.decoder_path)

    @cached_property
    def pretrain(self):
        from datasets import DatasetDict

        data = self._part("pretrain")
        splits = data.values() if isinstance(data, DatasetDict) else [] if data is None else [data]
        for split in splits:
            if "text" not in split.column_names:
                raise DatasetDirError(
                    f"{self.path / 'pretrain'} has no 'text' column (columns: {split.column_names}); "
                    "it is not a pretraining corpus written by the data stage."
                )
        return data

    @cached_property
    def sft(self):
        from datasets import DatasetDict

        data, where = self._part("sft"), self.path / "sft"
        if data is not None and not isinstance(data, DatasetDict):
            raise DatasetDirError(
                f"{where} holds a single Dataset; expected train/validation/test splits."
            )
        for name, split in (data or {}).items():
            missing = [c for c in SFT_COLUMNS if c not in split.column_names]
            if missing:
                raise DatasetDirError(
                    f"{where} split {name!r} lacks column(s) {missing} (has {split.column_names}); "
                    "it was not written by this version of the data stage. Rebuild it with "
                    "`cellrlhf data build`."
                )
        return data

    @cached_property
    def rl(self):
        return self._part("rl")

    def _part(self, name: str):
        from datasets import load_from_disk

        where = self.path / name
        return load_from_disk(str(where)) if where.exists() else None

    def load_pretrain(self):
        """The pretraining corpus (a ``Dataset`` or ``DatasetDict`` with ``text``); required."""
        if self.pretrain is None:
            raise DatasetDirError(
                f"{self.path} has no pretrain/ corpus; build it with `cellrlhf data build` "
                "(pretrain output enabled) or pass the dataset directory that has one."
            )
        return self.pretrain

    def load_sft(self):
        """The instruction data (a ``DatasetDict`` with :data:`SFT_COLUMNS`); required."""
        if self.sft is None:
            raise DatasetDirError(
                f"{self.path} has no sft/ data; build it with `cellrlhf data build` or pass the "
                "dataset directory that has one."
            )
        return self.sft

    def perturbation_targets(self) -> list[str]:
        """Target genes of all perturbations in the data (they need gene tokens too).

        Read from the manifest's ``perturbation_targets`` list; when absent, collected from the
        ``perturbation`` column of the SFT splits.
        """
        listed = self.manifest.get("perturbation_targets")
        if listed is None:
            sft = self.sft or {}
            listed = [p for split in sft.values() for p in split.unique("perturbation") if p]
        return _unique_targets(listed)


def open_dataset_dir(path: str | Path | None) -> DatasetDir:
    """Open a directory written by ``cellrlhf data build`` and check its manifest.

    Raises
    ------
    DatasetDirError
        When no path is given, the directory does not exist, or it has no cellrlhf dataset
        ``manifest.json``.
    """
    if not path:
        raise DatasetDirError(
            "no dataset given: pass --dataset_dir <directory written by `cellrlhf data build`> (or "
            "set `dataset_dir:` in the --config YAML)."
        )
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetDirError(
            f"dataset directory {root} does not exist; run `cellrlhf data build` first."
        )
    manifest_path = root / MANIFEST_FILENAME
    if not manifest_path.exists():
        raise DatasetDirError(
            f"{root} has no {MANIFEST_FILENAME}: not a built cellrlhf dataset (or the build did not "
            "finish). Build it with `cellrlhf data build --config <yaml>`."
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DatasetDirError(f"{manifest_path} is not a cellrlhf dataset manifest.")
    return DatasetDir(root, manifest)


def read_dataset_manifest(path: str | Path | None, *, required: bool = True) -> dict | None:
    """The ``manifest.json`` of a dataset directory.

    Parameters
    ----------
    path
        The dataset directory.
    required
        ``True``: checked as :func:`open_dataset_dir` does (a :class:`DatasetDirError` when
        missing or not a cellrlhf dataset manifest). ``False``: whatever JSON object the file
        holds, ``None`` when there is no path, no file or no readable JSON object (for cards
        and reports that show what there is).
    """
    if required:
        return open_dataset_dir(path).manifest
    if not path:
        return None
    try:
        payload = json.loads((Path(path).expanduser() / MANIFEST_FILENAME).read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _unique_targets(perturbations) -> list[str]:
    from cellrlhf.cell2text.markup import CONTROL_PERT, split_perturbation

    seen: dict[str, str] = {}
    for item in perturbations:
        for target in split_perturbation(str(item)):
            if target.lower() not in {"control", CONTROL_PERT}:
                seen.setdefault(target.upper(), target)
    return list(seen.values())
