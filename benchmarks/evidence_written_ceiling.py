"""What can a model read from its evidence, as each ``evidence.write`` writes it?

For every ``rl/`` prompt of a built dataset with evidence of ``--kind`` (``components``: a
combination ``A+B`` whose singles are measured in ``rl/train``; ``other_contexts``: the same
perturbation measured in other contexts), the measured items' real pseudo-bulks are written the
way a prompt shows them and mapped back to a change, and their sum (components) or mean (other
contexts) is scored against the prompt's real change (``reference_perturbed -
reference_control``), next to the baseline with the same information in expression space
(``additive`` / ``context_transfer``, unwritten):

- ``profile<L>``: each single's pseudo-bulk as an L-gene ranked sentence; the i-th gene gets the
  i-th largest value of the control pseudo-bulk (written and mapped the same way), minus it;
- ``ranks<N>``: the N genes each single raises and the N it lowers most against the control
  mean, ranks only; the i-th of n gets +-(n - i) / n;
- ``change``: ``evidence.write: change`` with the default size classes (>= 1, 0.3, 0.1), as
  :func:`cellrlhf.data.evidence.change_classes` writes them; a class reads as the geometric mean
  of its bounds (the top one as 1.5x its threshold).

``pearson_specific`` subtracts the mean change of the context's other training perturbations.
Training single prompts are left out (with ``components_of_singles`` they show themselves).

    python -m benchmarks.evidence_written_ceiling --dataset-dir runs/fold0/data
    python -m benchmarks.evidence_written_ceiling --dataset-dir runs/mcfaline/data --kind other_contexts
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.pseudobulk_sentence_ceiling import _written  # the same profile writing


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


def _parts(kind: str, pert: str, ctx: str, units: dict) -> list[tuple[str, str]]:
    """The measured training units a prompt's evidence of ``kind`` shows (none: not scored)."""
    if kind == "components":
        parts = [(t, ctx) for t in pert.split("+")] if "+" in pert else []
        return parts if parts and all(p in units for p in parts) else []
    return [(p, c) for p, c in units if p == pert and c != ctx]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--kind", choices=["components", "other_contexts"], default="components")
    parser.add_argument("--length", type=int, nargs="+", default=[15, 100])
    parser.add_argument("--change-genes", type=int, nargs="+", default=[10, 20, 50])
    args = parser.parse_args()

    import pandas as pd
    from datasets import load_from_disk

    rl = load_from_disk(str(Path(args.dataset_dir) / "rl"))
    units = {}  # training (perturbation, context) -> (pseudo-bulk, its control pseudo-bulk)
    for row in rl["train"]:
        units[(row["perturbation"], row["cell_context"])] = (
            np.asarray(row["reference_perturbed"], dtype=np.float64),
            np.asarray(row["reference_control"], dtype=np.float64),
        )
    records = []
    for split in rl:
        for row in rl[split]:
            pert, ctx = row["perturbation"], row["cell_context"]
            parts = _parts(args.kind, pert, ctx, units)
            if not parts or (split == "train" and args.kind == "components" and "+" not in pert):
                continue
            real = np.asarray(row["reference_perturbed"]) - np.asarray(row["reference_control"])
            mean = np.mean(
                [u - c for (p, k), (u, c) in units.items() if k == ctx and p != pert], axis=0
            )
            combine = np.sum if args.kind == "components" else lambda x, axis: np.mean(x, axis)
            changes = {p: units[p][0] - units[p][1] for p in parts}
            predictions = {"same_information_baseline": combine(list(changes.values()), axis=0)}
            for length in args.length:
                written = []
                for p in parts:
                    profile, control = units[p]
                    values = np.sort(control)[::-1]
                    written.append(
                        _written(profile, values, length) - _written(control, values, length)
                    )
                predictions[f"profile{length}"] = combine(written, axis=0)
            for n in args.change_genes:
                predictions[f"ranks{n}"] = combine(
                    [_change_written(changes[p], n) for p in parts], axis=0
                )
            predictions["change"] = combine([_classes_read(changes[p]) for p in parts], axis=0)
            for name, pred in predictions.items():
                records.append(
                    {
                        "split": split,
                        "perturbation": f"{pert} in {ctx}",
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
