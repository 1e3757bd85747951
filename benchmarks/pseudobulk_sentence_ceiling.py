"""How much of a pseudo-bulk's change survives being written as a cell sentence?

A pseudo-bulk written as a ranked gene list (as the data stage writes evidence lines and the
control pseudo-bulk of a prompt) keeps only the order of its top genes. This script writes, for
every ``rl/`` prompt of a built dataset, two such sentences of ``--length`` genes: the real answer
(the prompt's own ``reference_perturbed``) and the evidence a model is shown (the mean of the
``rl/train`` pseudo-bulks), maps each back to expression by giving the i-th gene the i-th largest
value of the real control pseudo-bulk, and scores the change from the control (written and mapped
the same way) against the real change, next to the mean baseline in expression space:

    python benchmarks/pseudobulk_sentence_ceiling.py --dataset-dir runs/fold0/data --length 15 100
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _written(profile: np.ndarray, values: np.ndarray, length: int) -> np.ndarray:
    order = np.argsort(-profile, kind="stable")[:length]
    order = order[profile[order] > 0]
    out = np.zeros_like(profile)
    out[order] = values[: len(order)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--length", type=int, nargs="+", default=[15, 100])
    args = parser.parse_args()

    from datasets import load_from_disk

    from cellrlhf.metrics.fidelity import pearson_rows

    rl = load_from_disk(str(Path(args.dataset_dir) / "rl"))
    train = rl["train"]
    perturbed = np.asarray(train["reference_perturbed"], dtype=np.float64)
    control = np.asarray(train["reference_control"], dtype=np.float64)
    mean_delta, evidence = (perturbed - control).mean(axis=0), perturbed.mean(axis=0)
    print("split length answer_written evidence_written mean_baseline")
    for split in ("train", "validation", "test"):
        if split not in rl:
            continue
        p = np.asarray(rl[split]["reference_perturbed"], dtype=np.float64)
        c = np.asarray(rl[split]["reference_control"], dtype=np.float64)
        for length in args.length:
            answer, copy, mean = [], [], []
            for pi, ci in zip(p, c, strict=True):
                values = np.sort(ci)[::-1]
                ctrl = _written(ci, values, length)
                answer.append(pearson_rows(_written(pi, values, length) - ctrl, pi - ci))
                copy.append(pearson_rows(_written(evidence, values, length) - ctrl, pi - ci))
                mean.append(pearson_rows(mean_delta, pi - ci))
            print(split, length, *(round(float(np.nanmean(x)), 3) for x in (answer, copy, mean)))


if __name__ == "__main__":
    main()
