"""Representation ceiling of each decoder method on a built dataset's held-out perturbations.

No sentence model can beat its decoder: the ceiling is the real test cells written as sentences
and decoded back (``representation_*`` rows of ``cellrlhf evaluate``). This script fits every
decoder method on the dataset's training cells (as ``cellrlhf data build`` does, with the build's
ranking and sentence length), scores each ceiling on the test perturbations of every cell
context with the evaluation's own code, and prints them next to the baselines, per held-out
perturbation and as means::

    python benchmarks/decoder_ceiling.py --dataset-dir runs/fold0/data [--n-neighbors 5 20 50]

The real cells are read from the source data set (``$CELLRLHF_DATA_DIR``). Training cells only
fit the decoders: the neighbours of a test cell are training cells.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

BASELINES = ("mean", "additive", "context_transfer")


def ceilings(dataset_dir: Path, n_neighbors: list[int]) -> pd.DataFrame:
    """One row per (decoder or baseline, context, held-out perturbation)."""
    from cellrlhf.cell2text.decoder import ExpressionDecoder
    from cellrlhf.data.schema import CONTROL_LABEL
    from cellrlhf.evaluation.comparison import compare_methods
    from cellrlhf.evaluation.prediction import encode_kwargs
    from cellrlhf.evaluation.real_data import real_cells

    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    train = real_cells(dataset_dir, "train", progress=False)
    test = real_cells(dataset_dir, "test", progress=False)
    options = encode_kwargs(manifest)
    fit = {k: options[k] for k in ("top_k", "seed") if k in options}
    decoders = {m: ExpressionDecoder.fit(train, method=m, **fit) for m in ("global", "per_gene")}
    for k in n_neighbors:
        decoders[f"neighbours_k{k}"] = ExpressionDecoder.fit(
            train, method="neighbours", n_neighbors=k, **fit
        )
    rows = []
    for context in dict.fromkeys(test.obs["cell_context"].astype(str)):
        in_context = test[test.obs["cell_context"].astype(str) == context].copy()
        results = compare_methods(
            in_context,
            train=train,
            context=context,
            context_col="cell_context",
            baselines=list(BASELINES),
            split_half_ceiling=False,
            decoders=decoders,
            control=CONTROL_LABEL,
            encode_kwargs=options,
        )
        for name, evaluation in results.items():
            table = evaluation.per_perturbation
            for _, row in table.iterrows():
                rows.append(
                    {
                        "method": name,
                        "cell_context": context,
                        "perturbation": row["perturbation"],
                        "pearson_delta": row["pearson_delta"],
                        "pearson_specific": row.get("pearson_specific", float("nan")),
                    }
                )
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", type=Path, required=True, nargs="+")
    parser.add_argument("--n-neighbors", type=int, nargs="+", default=[20])
    parser.add_argument("--csv", type=Path, help="write the per-perturbation table here")
    args = parser.parse_args(argv)
    tables = [ceilings(d, args.n_neighbors).assign(dataset=str(d)) for d in args.dataset_dir]
    table = pd.concat(tables, ignore_index=True)
    if args.csv:
        table.to_csv(args.csv, index=False)
    means = table.groupby("method")[["pearson_delta", "pearson_specific"]].mean()
    counts = table.groupby("method")["perturbation"].size().rename("n")
    print(pd.concat([counts, means], axis=1).round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
