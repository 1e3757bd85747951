"""What can a model read from combination evidence, as each ``evidence.write`` writes it?

For every combination ``A+B`` among the ``rl/`` prompts of a built dataset whose two singles are
measured in ``rl/train``, the singles' real pseudo-bulks are written the way a prompt shows them
and mapped back to a change, and the sum of the two mapped changes is scored against the
combination's real change (``reference_perturbed - reference_control``), next to the additive
baseline in expression space (the same information, unwritten):

- ``profile<L>``: each single's pseudo-bulk as an L-gene ranked sentence; the i-th gene gets the
  i-th largest value of the control pseudo-bulk (written and mapped the same way), minus it;
- ``ranks<N>``: the N genes each single raises and the N it lowers most against the control
  mean, ranks only; the i-th of n gets +-(n - i) / n;
- ``change``: ``evidence.write: change`` with the default size classes (>= 1, 0.3, 0.1), as
  :func:`cellrlhf.data.evidence.change_classes` writes them; a class reads as the geometric mean
  of its bounds (the top one as 1.5x its threshold).

``pearson_specific`` subtracts the mean change of the training singles (the mean baseline).

    python benchmarks/evidence_written_ceiling.py --dataset-dir runs/fold0/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _profile_written(profile: np.ndarray, values: np.ndarray, length: int) -> np.ndarray:
    order = np.argsort(-profile, kind="stable")[:length]
    order = order[profile[order] > 0]
    out = np.zeros_like(profile)
    out[order] = values[: len(order)]
    return out


def _change_written(change: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros_like(change)
    weights = (n - np.arange(n)) / n
    for sign in (1.0, -1.0):
        order = np.argsort(-sign * change, kind="stable")[:n]
        keep = sign * change[order] > 0
        out[order[keep]] = sign * weights[: len(order)][keep]
    return out


def _classes_read(change: np.ndarray, tiers=(1.0, 0.3, 0.1), max_genes: int = 20) -> np.ndarray:
    from cellrlhf.data.evidence import change_classes

    index = list(range(len(change)))
    bounds = dict(zip(tiers, [None, *tiers[:-1]], strict=True))
    out = np.zeros_like(change)
    raised_lowered = change_classes(change, index, tiers, max_genes)
    for sign, classes in zip((1.0, -1.0), raised_lowered, strict=True):
        for tier, genes in classes:
            upper = bounds[tier]
            out[genes] = sign * (1.5 * tier if upper is None else np.sqrt(tier * upper))
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--length", type=int, nargs="+", default=[15, 100])
    parser.add_argument("--change-genes", type=int, nargs="+", default=[10, 20, 50])
    args = parser.parse_args()

    import pandas as pd
    from datasets import load_from_disk

    rl = load_from_disk(str(Path(args.dataset_dir) / "rl"))
    singles, combos = {}, []
    for split in rl:
        for row in rl[split]:
            key = (row["perturbation"], row["cell_context"])
            perturbed = np.asarray(row["reference_perturbed"], dtype=np.float64)
            control = np.asarray(row["reference_control"], dtype=np.float64)
            if "+" in key[0]:
                combos.append((split, key, perturbed, control))
            elif split == "train":
                singles[key] = (perturbed, control)
    mean_change = {
        ctx: np.mean([p - c for (_, k), (p, c) in singles.items() if k == ctx], axis=0)
        for ctx in {k for _, k in singles}
    }
    records = []
    for split, (pert, ctx), perturbed, control in combos:
        parts = [(t, ctx) for t in pert.split("+")]
        if not all(p in singles for p in parts):
            continue
        real = perturbed - control
        mean = mean_change[ctx]
        train_control = singles[parts[0]][1]
        predictions = {"additive": sum(singles[p][0] - singles[p][1] for p in parts)}
        values = np.sort(train_control)[::-1]
        for length in args.length:
            written_control = _profile_written(train_control, values, length)
            predictions[f"profile{length}"] = sum(
                _profile_written(singles[p][0], values, length) - written_control for p in parts
            )
        for n in args.change_genes:
            predictions[f"ranks{n}"] = sum(
                _change_written(singles[p][0] - train_control, n) for p in parts
            )
        predictions["change"] = sum(_classes_read(singles[p][0] - train_control) for p in parts)
        for name, pred in predictions.items():
            records.append(
                {
                    "split": split,
                    "perturbation": pert,
                    "written": name,
                    "pearson_delta": _pearson(pred, real),
                    "pearson_specific": _pearson(pred - mean, real - mean),
                }
            )
    table = pd.DataFrame(records)
    print(table.pivot_table(index="perturbation", columns="written", values="pearson_specific"))
    print(
        table.groupby("written", sort=False)[["pearson_delta", "pearson_specific"]].mean().round(3)
    )


if __name__ == "__main__":
    main()
