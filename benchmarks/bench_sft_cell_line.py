"""Real-data check of the sft stage: cell-line accuracy against logistic regression, and validity.

Given a dataset directory built from the Norman/McFaline subset and an SFT model trained on it:

- the model answers the test split's ``cell_annotation`` prompts (greedy); accuracy is the share
  of exact cell-line names;
- a logistic regression on the same 500 genes (the cells' log-normalized expression), fitted on the
  pretraining (training-split) cells, classifies the same test cells;
- the model writes cells for the test split's ``cell_generation`` / ``perturbation_response``
  prompts (sampling, temperature 1); the decoder reports the valid gene fraction, duplicates,
  lengths.

    PYTHONPATH=. python benchmarks/bench_sft_cell_line.py --dataset runs/demo/data --model runs/demo/sft \\
        --h5ad $CELLRLHF_DATA_DIR/perturbench_devel.h5ad
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np


def _lr_accuracy(
    h5ad: Path, train_ids: list[str], test_ids: list[str], test_labels: list[str], label_of
) -> float:
    import anndata as ad
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    adata = ad.read_h5ad(h5ad)
    index = {name: i for i, name in enumerate(adata.obs_names)}
    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    train_rows = [index[c] for c in train_ids if c in index]
    test_rows = [index[c] for c in test_ids]
    y_train = [label_of[c] for c in train_ids if c in index]
    model = LogisticRegression(max_iter=3000)
    model.fit(X[train_rows], y_train)
    predicted = model.predict(X[test_rows])
    return float(
        np.mean([p.lower() == t.lower() for p, t in zip(predicted, test_labels, strict=True)])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", required=True, type=Path, help="dataset directory (cellrlhf data build)"
    )
    parser.add_argument("--model", required=True, type=Path, help="SFT model directory")
    parser.add_argument(
        "--h5ad", required=True, type=Path, help="the source .h5ad (for the LR baseline)"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--n-cells", type=int, default=300, help="test cells to annotate")
    parser.add_argument(
        "--n-generate", type=int, default=200, help="cells to generate for validity"
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch
    from datasets import load_from_disk

    from cellrlhf.sft.dataset_dir import open_dataset_dir
    from cellrlhf.sft.evaluation import GenerationEvaluator, sft_generation_examples
    from cellrlhf.sft.model_dir import load_cell_model

    torch.set_num_threads(1)
    data = open_dataset_dir(args.dataset)
    split = data.load_sft()[args.split]
    annotation = split.filter(lambda t: t == "cell_annotation", input_columns="task")
    generation = split.filter(
        lambda t: t in ("cell_generation", "perturbation_response"), input_columns="task"
    )
    model, tokenizer, _ = load_cell_model(args.model)
    model.eval()

    examples = sft_generation_examples(annotation, args.n_cells, seed=args.seed)
    start = time.perf_counter()
    evaluator = GenerationEvaluator(
        examples, tokenizer, data.decoder(), max_new_tokens=16, batch_size=32, seed=args.seed
    )
    model_accuracy = evaluator(model)["gen_cell_annotation_accuracy"]
    annotate_s = time.perf_counter() - start

    picked = np.sort(
        np.random.default_rng(args.seed).choice(len(annotation), len(examples), replace=False)
    )
    chosen = annotation.select(picked.tolist())
    assert [e.reference for e in examples] == chosen["cell_context"]
    test_ids = [ids[0] for ids in chosen["cell_ids"]]
    pretrain = load_from_disk(str(args.dataset / "pretrain"))
    train_ids = list(pretrain["cell_id"])
    contexts = {}
    for text, cell in zip(pretrain["text"], pretrain["cell_id"], strict=True):
        contexts[cell] = (
            text.split(";")[0].split(":")[-1].strip()
        )  # "cell_context: k562; <cell> ..."
    lr_accuracy = _lr_accuracy(args.h5ad, train_ids, test_ids, chosen["cell_context"], contexts)

    gen_examples = sft_generation_examples(generation, args.n_generate, seed=args.seed)
    evaluator = GenerationEvaluator(
        gen_examples,
        tokenizer,
        data.decoder(),
        max_new_tokens=args.max_new_tokens,
        batch_size=32,
        seed=args.seed,
    )
    start = time.perf_counter()
    validity = evaluator(model)
    generate_s = time.perf_counter() - start

    figures = {
        "test_cells": len(examples),
        "model_cell_line_accuracy": model_accuracy,
        "logistic_regression_accuracy": lr_accuracy,
        "accuracy_gap_points": 100 * (model_accuracy - lr_accuracy),
        "generated_cells": len(gen_examples),
        **{k.removeprefix("gen_"): v for k, v in validity.items()},
        "annotate_seconds": annotate_s,
        "generate_seconds": generate_s,
    }
    width = max(map(len, figures))
    for key, value in figures.items():
        print(
            f"{key.ljust(width)}  {value:.4f}"
            if isinstance(value, float)
            else f"{key.ljust(width)}  {value}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
