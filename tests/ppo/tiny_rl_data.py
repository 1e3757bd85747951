"""A tiny perturbation data set directory in the data stage's saved format, for the RL tests.

One cell line; each perturbation switches on its own two response genes on top of a shared
programme; four perturbations are trained on and two are held out (``rl/`` train / test).
The RL prompts are the SFT ``perturbation_response`` prompts without the answer. The real
reference profiles are pseudo-bulks of the simulated cells decoded with the data set's
expression decoder, so the decoded control equals the real control here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cellrlhf.cell2text.markup import format_cell, format_perturbation
from cellrlhf.cell2text.vocab import GeneVocab

PROGRAMME = ["ACTB", "GAPDH", "RPL13", "RPS27", "MYC", "TP53"]
RESPONSES = {
    "KLF1": ["HBB", "HBA1"],
    "GATA1": ["GATA2", "TAL1"],
    "CEBPA": ["LYZ", "CST3"],
    "SPI1": ["CD14", "FCGR3A"],
    "FOS": ["JUN", "EGR1"],
    "MS4A1": ["CD19", "CD79A"],
}
TRAIN = ("KLF1", "GATA1", "CEBPA", "SPI1")
HELDOUT = ("FOS", "MS4A1")
GENES = tuple(PROGRAMME + [g for genes in RESPONSES.values() for g in genes] + ["NKG7", "GNLY"])
CONTEXT = "K562"
SYSTEM = "You are a single-cell biology assistant."


def sentence(rng: np.random.Generator, perturbation: str) -> str:
    """One simulated cell: response genes on top, then the shared programme, shuffled a bit."""
    genes = list(RESPONSES.get(perturbation, [])) + PROGRAMME
    weights = np.linspace(3.0, 1.0, len(genes)) + rng.normal(0, 0.4, len(genes))
    order = [genes[i] for i in np.argsort(-weights)]
    return " ".join(order[: int(rng.integers(len(order) - 2, len(order) + 1))])


def prompt(perturbation: str) -> list[dict]:
    user = f"Predict a {CONTEXT} cell after activating {format_perturbation([perturbation])}."
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _profile(sentences: list[str], decoder) -> list[float]:
    X, _ = decoder.decode(sentences)
    return np.asarray(X.mean(axis=0)).ravel().astype(float).tolist()


def write_tiny_rl_dataset(out: Path, *, seed: int = 0, cells: int = 12) -> Path:
    """Write the data set directory (``sft/`` and ``rl/`` with train / test) and return it."""
    from datasets import Dataset, DatasetDict

    from cellrlhf.cell2text.decoder import ExpressionDecoder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = GeneVocab(GENES)
    vocab.save(out)
    decoder = ExpressionDecoder(vocab, intercept=2.0, slope=-1.0, params={"method": "global"})
    decoder.save(out)

    real = {p: [sentence(rng, p) for _ in range(cells)] for p in (*RESPONSES, "control")}
    messages, tasks, perts = [], [], []
    for p in TRAIN:
        for s in real[p]:
            messages.append([*prompt(p), {"role": "assistant", "content": format_cell(s)}])
            tasks.append("perturbation_response")
            perts.append(p)
    for s in real["control"]:
        user = f"Generate a {CONTEXT} cell."
        messages.append(
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": user},
                {"role": "assistant", "content": format_cell(s)},
            ]
        )
        tasks.append("cell_generation")
        perts.append("")
    order = rng.permutation(len(messages))
    n_val = 6

    def part(idx):
        return Dataset.from_dict(
            {
                "messages": [messages[i] for i in idx],
                "task": [tasks[i] for i in idx],
                "perturbation": [perts[i] for i in idx],
                "cell_context": [CONTEXT] * len(idx),
            }
        )

    DatasetDict(
        {"train": part(order[n_val:]), "validation": part(order[:n_val]), "test": part(order[:2])}
    ).save_to_disk(str(out / "sft"))

    control = _profile(real["control"], decoder)

    def rl_split(perturbations):
        rows = {
            k: []
            for k in (
                "prompt",
                "perturbation",
                "cell_context",
                "split_kind",
                "reference_perturbed",
                "reference_control",
                "decoded_control",
                "reference_sentences",
                "de_genes_up",
                "de_genes_down",
            )
        }
        for p in perturbations:
            rows["prompt"].append(prompt(p))
            rows["perturbation"].append(p)
            rows["cell_context"].append(CONTEXT)
            rows["split_kind"].append("single")
            rows["reference_perturbed"].append(_profile(real[p], decoder))
            rows["reference_control"].append(control)
            rows["decoded_control"].append(control)
            rows["reference_sentences"].append(real[p])
            rows["de_genes_up"].append(list(RESPONSES[p]))
            rows["de_genes_down"].append([])
        return Dataset.from_dict(rows)

    DatasetDict({"train": rl_split(TRAIN), "test": rl_split(HELDOUT)}).save_to_disk(str(out / "rl"))
    manifest = {
        "format": "cellrlhf.dataset",
        "fingerprint": f"tiny-rl-{seed}",
        "simulated": True,
        "perturbation_targets": list(RESPONSES),
        "splits": {"train": list(TRAIN), "test": list(HELDOUT)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out
