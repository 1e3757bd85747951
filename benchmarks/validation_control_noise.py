"""How much of a data set's validation fidelity is shared control noise.

For every ``rl/validation`` prompt, scores a predictor of *no change*: the context's training
control pseudo-bulk (decoded, from the ``rl/test`` or ``rl/train`` rows of the same context),
taken against the prompt's own control, versus the prompt's real change. With the validation
prompts' change taken against the training controls (as test prompts' is) this scores ~0 plus
sampling noise; against a small separate control set it scores high, because that control
mean's noise sits in both changes.

    python benchmarks/validation_control_noise.py runs/mcfaline_unseen_pair_evidence/fold0/data ...
"""

from __future__ import annotations

import argparse

import numpy as np


def no_change_fidelity(dataset_dir: str) -> tuple[list[float], set[str]]:
    """``pearson_delta`` of the no-change predictor per validation prompt, and the control
    splits the validation prompts use."""
    from cellrlhf.data.layout import open_dataset_dir
    from cellrlhf.metrics.fidelity import pearson_delta

    rl = open_dataset_dir(dataset_dir).rl
    columns = ["cell_context", "reference_control", "decoded_control", "control_split"]
    training = {}
    for split in ("test", "train"):
        for row in rl[split].select_columns(columns):
            if row["control_split"] == "train":
                training.setdefault(row["cell_context"], np.asarray(row["decoded_control"]))
    scores = []
    for row in rl["validation"]:
        if row["cell_context"] not in training:
            continue  # a context with no training-control prompt to borrow from
        scores.append(
            float(
                pearson_delta(
                    training[row["cell_context"]],
                    np.asarray(row["decoded_control"]),
                    np.asarray(row["reference_perturbed"]),
                    np.asarray(row["reference_control"]),
                )
            )
        )
    return scores, set(rl["validation"]["control_split"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dirs", nargs="+")
    for path in parser.parse_args().dataset_dirs:
        scores, splits = no_change_fidelity(path)
        finite = [s for s in scores if np.isfinite(s)]
        mean = f"{np.mean(finite):.2f}" if finite else "undefined (no change at all)"
        print(
            f"{path}: no-change predictor on {len(scores)} validation prompts: pearson_delta "
            f"{mean} ({', '.join(f'{s:.2f}' for s in scores)}); controls of {sorted(splits)}"
        )


if __name__ == "__main__":
    main()
