"""Does a model read the evidence in its prompts? Swap it and see whether the answer follows.

For each ``--pair TARGET:DONOR`` (perturbations with ``rl/`` prompts in a built dataset with
evidence), samples ``--cells`` cells of a saved model under the cell grammar for the target's
prompt as built (twice, two seeds: the sampling noise), with no evidence block, and with the
donor prompt's block in place of its own, and scores each pseudo-bulk change (decoded control
subtracted) against the target's and the donor's real change:

    python benchmarks/evidence_swap.py --dataset-dir runs/fold3/data --model runs/fold3/seed0/sft \\
        --pair KLF1+MAP2K6:MAPK1+TGFBR2 --pair KLF1:MAPK1

A model that reads its evidence follows the donor (``r_donor_real`` high under ``donor``,
``r_own`` low); one that ignores it answers the same whatever the block (``r_own`` near the
``own_again`` figure).
"""

from __future__ import annotations

import argparse

import numpy as np


def _user(row) -> str:
    return next(m["content"] for m in row["prompt"] if m["role"] == "user")


def _with_block(row, block: str | None) -> list[dict]:
    def edit(text: str) -> str:
        question = text.split("\n\n", 1)[1]
        return f"{block}\n\n{question}" if block else question

    return [
        {**m, "content": edit(m["content"])} if m["role"] == "user" else m for m in row["prompt"]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--pair", action="append", required=True, help="TARGET:DONOR")
    parser.add_argument("--cells", type=int, default=256)
    args = parser.parse_args()

    import pandas as pd

    from cellrlhf.cell2text.markup import extract_cell
    from cellrlhf.data.layout import open_dataset_dir
    from cellrlhf.metrics.fidelity import change_from_control
    from cellrlhf.sampling import GenerationSettings, Sampler
    from cellrlhf.sft.model_dir import load_model_dir

    built = open_dataset_dir(args.dataset_dir)
    decoder = built.decoder()
    rows = {}
    for split in built.rl:
        for row in built.rl[split]:
            rows.setdefault(row["perturbation"], row)
    loaded = load_model_dir(args.model)
    sampler = Sampler(loaded.model, loaded.tokenizer, cell_genes=loaded.vocab)
    top_k = ((built.manifest.get("config") or {}).get("sentences") or {}).get("top_k") or 100

    def real(row) -> np.ndarray:
        return np.asarray(row["reference_perturbed"]) - np.asarray(row["reference_control"])

    records = []
    for pair in args.pair:
        target, donor = (rows[name] for name in pair.split(":"))
        variants = {
            "own": (target["prompt"], 0),
            "own_again": (target["prompt"], 1),
            "none": (_with_block(target, None), 0),
            "donor": (_with_block(target, _user(donor).split("\n\n", 1)[0]), 0),
        }
        changes = {}
        for name, (prompt, seed) in variants.items():
            settings = GenerationSettings(
                max_new_tokens=int(top_k) + 8, temperature=1.0, top_p=1.0, top_k=0, seed=seed,
                constrain_cells=True,
            )  # fmt: skip
            done = sampler.generate([prompt] * args.cells, settings, batch_size=64)
            matrix, _ = decoder.decode([extract_cell(c.text).sentence for c in done])
            matrix = np.asarray(matrix.todense()) if hasattr(matrix, "todense") else matrix
            changes[name] = change_from_control(
                np.asarray(matrix).mean(axis=0), np.asarray(target["decoded_control"])
            )
        for name, change in changes.items():
            records.append(
                {
                    "pair": pair,
                    "variant": name,
                    "r_real": float(np.corrcoef(change, real(target))[0, 1]),
                    "r_donor_real": float(np.corrcoef(change, real(donor))[0, 1]),
                    "r_own": float(np.corrcoef(change, changes["own"])[0, 1]),
                }
            )
    table = pd.DataFrame(records)
    print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
