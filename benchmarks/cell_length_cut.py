"""Are a model's cells too long for their context? Cut them to real lengths and score again.

For every held-out pair of one or more ``cellrlhf evaluate`` directories, the model's saved cells
(``predictions/<model>.h5ad``, column ``cell_sentence``) are cut to lengths drawn from the
context's *training* perturbed cells (genes with expression > 0; training cells only, so the cut
uses nothing a user would not have), decoded again with the dataset's expression decoder and
scored like the evaluation does: ``pearson_delta`` (change against the decoded control the
evaluation subtracts) and ``pearson_specific`` (both changes minus the context's mean training
change). The uncut columns reproduce the evaluation's figures, a check of the script. Paired
difference (cut - uncut) with its 95% interval over the pairs.

    python -m benchmarks.cell_length_cut runs/mcf/fold*/seed0/eval --model sft
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.change_decomposition import _context_reference, _dense, _mean_rows, _r


def cut_run(eval_dir: Path, model: str, seed: int = 0) -> list[dict]:
    """One row per held-out pair: lengths, and both metrics uncut and cut."""
    import anndata as ad

    from cellrlhf.cell2text.decoder import ExpressionDecoder
    from cellrlhf.evaluation.real_data import real_cells

    dataset_dir = json.loads((eval_dir / "manifest.json").read_text())["dataset"]["dir"]
    test, reference = _context_reference(dataset_dir, None)
    genes = list(test.var_names)
    train = real_cells(dataset_dir, "train", progress=False)
    lengths = np.asarray((train.X > 0).sum(axis=1)).ravel()
    train_ctx = train.obs["cell_context"].astype(str).to_numpy()
    train_pert = train.obs["perturbation"].astype(str).to_numpy()
    decoder = ExpressionDecoder.load(Path(dataset_dir) / "expression_decoder.json")
    order = pd.Index(decoder.vocab.genes).get_indexer(genes)
    pred = ad.read_h5ad(eval_dir / "predictions" / f"{model}.h5ad")[:, genes]
    obs = pred.obs
    kind, ctx = obs["split_kind"].astype(str).to_numpy(), obs["cell_context"].astype(str).to_numpy()
    pert, sentences = obs["perturbation"].astype(str).to_numpy(), obs["cell_sentence"].astype(str)
    test_pert = test.obs["perturbation"].astype(str).to_numpy()
    test_ctx = test.obs["cell_context"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    rows = []
    for c in sorted(set(ctx)):
        pool = lengths[(train_ctx == c) & (train_pert != "control")]
        control = _mean_rows(pred, (kind == "control") & (ctx == c))
        mean_change = reference[c]["mean_change"]
        for p in sorted(set(pert[(ctx == c) & (kind != "control")])):
            mask = (pert == p) & (ctx == c) & (kind != "control")
            cells = sentences[mask].tolist()
            drawn = rng.choice(pool, len(cells))
            cut = [" ".join(s.split()[:n]) for s, n in zip(cells, drawn, strict=True)]
            decoded, _ = decoder.decode(cut)
            real = _mean_rows(test, (test_pert == p) & (test_ctx == c)) - reference[c]["control"]
            row = {"run": str(eval_dir), "pair": f"{p} | {c}", "context": c,
                   "genes_model": float(np.mean([len(s.split()) for s in cells])),
                   "genes_train": float(pool.mean())}  # fmt: skip
            means = {"uncut": _mean_rows(pred, mask), "cut": _dense(decoded)[:, order].mean(0)}
            for name, mean in means.items():
                change = mean - control
                row[f"pearson_delta_{name}"] = _r(change, real)
                row[f"pearson_specific_{name}"] = _r(change - mean_change, real - mean_change)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("evals", nargs="+", help="cellrlhf evaluate output directories")
    parser.add_argument("--model", default="sft", help="prediction name")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn lengths")
    parser.add_argument("--csv", default=None, help="also write the per-pair rows here")
    args = parser.parse_args()
    from cellrlhf.metrics.intervals import paired_difference

    table = pd.DataFrame([r for e in args.evals for r in cut_run(Path(e), args.model, args.seed)])
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(table.groupby("context")[["genes_model", "genes_train"]].mean().round(1).to_string())
    for metric in ("pearson_delta", "pearson_specific"):
        long = pd.concat(
            table.assign(method=name, value=table[f"{metric}_{name}"], unit=table["pair"])
            for name in ("uncut", "cut")
        )
        d = paired_difference(long, "cut", "uncut", value="value", cluster="unit", within=("run",))
        print(f"{metric}: uncut {table[f'{metric}_uncut'].mean():.3f}, cut "
              f"{table[f'{metric}_cut'].mean():.3f}, cut - uncut {d.estimate:+.3f} "
              f"({d.low:+.3f} to {d.high:+.3f}), {d.n_clusters} pairs")  # fmt: skip


if __name__ == "__main__":
    main()
