"""A tiny dataset directory in the data stage's saved format, for the sft tests.

Two cell lines with their own gene programmes, two single perturbations (one target, ``FOXA1``,
is not a measured gene, so it only exists as a perturbation token) and a control; chat examples
of three tasks; RL references for fidelity. Everything is seeded and small enough for seconds of
training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cellrlhf.cell2text.markup import format_cell, format_perturbation
from cellrlhf.cell2text.vocab import GeneVocab

GENES = [
    "CD3E",
    "CD8A",
    "MS4A1",
    "CD19",
    "LYZ",
    "CST3",
    "NKG7",
    "GNLY",
    "HBB",
    "HBA1",
    "KLF1",
    "GATA1",
    "CEBPA",
    "SPI1",
    "MYC",
    "TP53",
    "ACTB",
    "GAPDH",
    "RPL13",
    "RPS27",
    "FOS",
    "JUN",
    "IL7R",
    "CCR7",
]
CONTEXTS = {"K562": GENES[8:16], "HEK293": GENES[0:8]}
HOUSEKEEPING = GENES[16:20]
PERTURBATIONS = {"KLF1": GENES[20:22], "FOXA1": GENES[22:24], "control": []}
TARGETS = ["KLF1", "FOXA1"]

SYSTEM = "You are a single-cell biology assistant."


def _sentence(rng: np.random.Generator, context: str, perturbation: str) -> str:
    programme = list(CONTEXTS[context]) + list(PERTURBATIONS[perturbation])
    weights = np.linspace(3.0, 1.0, len(programme)) + rng.normal(0, 0.3, len(programme))
    order = [programme[i] for i in np.argsort(-weights)]
    keep = int(rng.integers(len(order) - 2, len(order) + 1))
    extra = list(rng.choice(HOUSEKEEPING, size=2, replace=False))
    return " ".join(order[:keep] + extra)


def _cells(rng, n_per_group: int):
    for context in CONTEXTS:
        for perturbation in PERTURBATIONS:
            for _ in range(n_per_group):
                yield context, perturbation, _sentence(rng, context, perturbation)


def _messages(task: str, context: str, perturbation: str, sentence: str) -> list[dict]:
    if task == "cell_annotation":
        user = f"What cell line is this cell? {format_cell(sentence)}"
        answer = context
    elif task == "perturbation_response":
        pert = format_perturbation([perturbation])
        user = f"Predict a {context} cell after activating {pert}."
        answer = format_cell(sentence)
    else:
        user = f"Generate a {context} cell."
        answer = format_cell(sentence)
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
    ]


def _profile(sentences: list[str], vocab: GeneVocab) -> list[float]:
    X = np.zeros((len(sentences), len(vocab)))
    for row, sentence in enumerate(sentences):
        for rank, gene in enumerate(sentence.split()):
            X[row, vocab.index(gene)] = max(0.0, 2.0 - np.log10(rank + 1))
    return X.mean(axis=0).tolist()


def write_tiny_dataset(out: Path, *, seed: int = 0, n_per_group: int = 6) -> Path:
    """Write the dataset directory and return it."""
    from datasets import Dataset, DatasetDict

    from cellrlhf.cell2text.decoder import ExpressionDecoder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = GeneVocab(tuple(GENES))
    vocab.save(out)
    ExpressionDecoder(vocab, intercept=2.0, slope=-1.0, params={"method": "global"}).save(out)

    cells = list(_cells(rng, n_per_group))
    Dataset.from_dict({"text": [format_cell(s) for _, _, s in cells]}).save_to_disk(
        str(out / "pretrain")
    )

    rows: dict[str, list] = {k: [] for k in ("messages", "task", "perturbation", "cell_context")}
    for context, perturbation, sentence in cells:
        tasks = ["cell_annotation", "cell_generation"] if perturbation == "control" else []
        tasks += ["perturbation_response"] if perturbation != "control" else []
        for task in tasks:
            rows["messages"].append(_messages(task, context, perturbation, sentence))
            rows["task"].append(task)
            rows["perturbation"].append("" if task != "perturbation_response" else perturbation)
            rows["cell_context"].append(context)
    order = rng.permutation(len(rows["task"]))
    n_val, n_test = 12, 6
    parts = {
        "validation": order[:n_val],
        "test": order[n_val : n_val + n_test],
        "train": order[n_val + n_test :],
    }
    sft = DatasetDict(
        {
            name: Dataset.from_dict({k: [v[i] for i in idx] for k, v in rows.items()})
            for name, idx in parts.items()
        }
    )
    sft.save_to_disk(str(out / "sft"))

    control = {c: [s for cc, p, s in cells if cc == c and p == "control"] for c in CONTEXTS}
    rl_rows: dict[str, list] = {
        k: []
        for k in (
            "prompt",
            "perturbation",
            "cell_context",
            "split_kind",
            "reference_perturbed",
            "reference_control",
            "decoded_control",
        )
    }
    for context in CONTEXTS:
        for perturbation in TARGETS:
            real = [s for cc, p, s in cells if cc == context and p == perturbation]
            rl_rows["prompt"].append(
                _messages("perturbation_response", context, perturbation, "")[:2]
            )
            rl_rows["perturbation"].append(perturbation)
            rl_rows["cell_context"].append(context)
            rl_rows["split_kind"].append("single")
            rl_rows["reference_perturbed"].append(_profile(real, vocab))
            rl_rows["reference_control"].append(_profile(control[context], vocab))
            rl_rows["decoded_control"].append(_profile(control[context], vocab))
    DatasetDict({"train": Dataset.from_dict(rl_rows)}).save_to_disk(str(out / "rl"))

    manifest = {
        "format": "cellrlhf.dataset",
        "fingerprint": f"tiny-{seed}",
        "simulated": True,
        "perturbation_targets": TARGETS,
        "counts": {name: len(idx) for name, idx in parts.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out
