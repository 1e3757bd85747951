"""The saved dataset directory: file names, column types, and reading it back.

::

    <out>/manifest.json            config, fingerprint, source checksums, counts, "simulated"
    <out>/gene_vocab.json          GeneVocab of the measured genes
    <out>/expression_decoder.json  ExpressionDecoder fitted on training cells only
    <out>/splits.json              split manifest (held-out sets, cells of every split)
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
from pathlib import Path

__all__ = [
    "MANIFEST_FILENAME",
    "SPLITS_FILENAME",
    "MANIFEST_FORMAT",
    "pretrain_features",
    "sft_features",
    "rl_features",
    "BuiltDataset",
    "load_built_dataset",
]

MANIFEST_FILENAME = "manifest.json"
SPLITS_FILENAME = "splits.json"
MANIFEST_FORMAT = "cellrlhf.dataset"


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


@dataclass
class BuiltDataset:
    """A built dataset directory, read back.

    Attributes
    ----------
    path
        The directory.
    manifest, splits
        ``manifest.json`` and ``splits.json``.
    pretrain, sft, rl
        ``datasets`` objects, or ``None`` when that part was not built.
    """

    path: Path
    manifest: dict
    splits: dict
    pretrain: object | None
    sft: object | None
    rl: object | None

    @property
    def vocab(self):
        from cellrlhf.cell2text.vocab import GeneVocab

        return GeneVocab.load(self.path)

    @property
    def decoder(self):
        from cellrlhf.cell2text.decoder import ExpressionDecoder

        return ExpressionDecoder.load(self.path)


def load_built_dataset(path: str | Path) -> BuiltDataset:
    """Read a directory written by :func:`cellrlhf.data.build.build_datasets`."""
    from datasets import load_from_disk

    path = Path(path)
    manifest_path = path / MANIFEST_FILENAME
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"{path} has no {MANIFEST_FILENAME}: not a built cellrlhf dataset (or the build did not "
            "finish). Build it with `cellrlhf data build --config <yaml>`."
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{manifest_path} is not a cellrlhf dataset manifest.")
    splits = json.loads((path / SPLITS_FILENAME).read_text())
    parts = {}
    for part in ("pretrain", "sft", "rl"):
        parts[part] = load_from_disk(str(path / part)) if (path / part).exists() else None
    return BuiltDataset(path, manifest, splits, parts["pretrain"], parts["sft"], parts["rl"])
