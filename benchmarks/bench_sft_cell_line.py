"""Real-data check of the sft stage: cell-line accuracy against logistic regression, and validity.

Given a dataset directory built from the Norman/McFaline subset and an SFT model trained on it:

- the model answers the test split's ``cell_annotation`` prompts (greedy); accuracy is the share
  of exact cell-line names;
- a logistic regression on the same 500 genes (the cells' log-normalized expression), fitted on the
  pretraining (training-split) cells, classifies the same test cells;
- the model writes cells for the test split's ``cell_generation`` / ``perturbation_response``
  prompts (sampling, temperature 1); the decoder reports the valid gene fraction, duplicates,
  lengths. With ``--constrained`` the same prompts are answered a second time (same seed) under
  constrained decoding (``cellrlhf.cell2text.sentence_constraints``) and both columns are printed
  side by side, with a breakdown of what the invalid words are;
- ``--history`` prints the generation metrics the trainers logged at each evaluation
  (``trainer_state.json`` of the model directory and its checkpoints, and of ``--pretrain``).

    PYTHONPATH=. python benchmarks/bench_sft_cell_line.py --dataset runs/demo/data --model runs/demo/sft \\
        --h5ad $CELLRLHF_DATA_DIR/perturbench_devel.h5ad --constrained --history
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

_VALIDITY_KEYS = (
    "valid_gene_fraction",
    "duplicate_fraction",
    "unknown_fraction",
    "empty_fraction",
    "unclosed_fraction",
    "mean_length",
    "distinct_fraction",
)


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


def _answer_breakdown(answers: list[str], vocab) -> dict:
    """Where invalid words come from: answers without ``<cell>``, repeats, non-gene words."""
    from collections import Counter

    from cellrlhf.cell2text.markup import extract_cell

    known = {g.upper() for g in vocab.genes}
    no_marker, opened_words, opened_valid = 0, 0, 0
    unknown: Counter[str] = Counter()
    repeated: Counter[str] = Counter()
    for answer in answers:
        cell = extract_cell(answer)
        no_marker += not cell.found
        words = cell.sentence.split()
        seen: set[str] = set()
        for word in words:
            upper = word.upper()
            if upper not in known:
                unknown[word] += 1
            elif upper in seen:
                repeated[word] += 1
            elif cell.found:
                opened_valid += 1
            seen.add(upper)
        opened_words += len(words) if cell.found else 0
    return {
        "no_cell_marker_fraction": no_marker / max(len(answers), 1),
        "valid_fraction_of_opened_cells": opened_valid / max(opened_words, 1),
        "top_unknown_words": unknown.most_common(5),
        "top_repeated_genes": repeated.most_common(5),
    }


def _pseudo_bulk(decoder, answers: list[str]) -> np.ndarray:
    matrix, _ = decoder.decode(list(answers))
    return np.asarray(matrix.mean(axis=0)).ravel()


def _history(paths: list[Path]) -> list[dict]:
    """``eval_gen_*`` entries of the ``trainer_state.json`` files under ``paths`` (the model
    directory's and its checkpoints'; one row per run and step)."""
    rows, seen = [], set()
    for root in paths:
        for state in sorted(root.glob("**/trainer_state.json")):
            for entry in json.loads(state.read_text()).get("log_history", []):
                gen = {k: v for k, v in entry.items() if k.startswith("eval_gen_")}
                if gen and (root, entry.get("step")) not in seen:
                    seen.add((root, entry.get("step")))
                    rows.append({"source": str(root), "step": entry.get("step"), **gen})
    return rows


_POSITION_BUCKETS = ((1, 10), (11, 20), (21, 30), (31, 10_000))


def _repeat_mass(model_dir: Path, examples, genes, *, chat: bool) -> dict:
    """Teacher-forced diagnostics on real cells: at each step inside the answer's cell, the
    probability the model gives to a gene already in the cell (``repeat``) and to a token that
    is neither an unused gene, ``</cell>`` nor a separator (``off_grammar``); by gene position."""
    import torch
    from transformers import AutoModelForCausalLM

    from cellrlhf.cell2text.markup import CELL_START
    from cellrlhf.cell2text.sentence_constraints import CellSentenceConstraint
    from cellrlhf.cell2text.tokenizer import load_cell_tokenizer

    tokenizer = load_cell_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True).eval()
    rule = CellSentenceConstraint(tokenizer, genes)
    gene_ids = set(rule.gene_ids)
    allowed = torch.tensor(sorted(gene_ids | set(rule.space_ids) | {rule.cell_end_id}))
    per_bucket: dict[str, list[tuple[float, float]]] = {
        f"{a}-{b}": [] for a, b in _POSITION_BUCKETS
    }
    expected_repeats = []
    for example in examples:
        if chat:
            messages = [*example.prompt, {"role": "assistant", "content": example.reference}]
            text, special = tokenizer.apply_chat_template(messages, tokenize=False), False
        else:
            text = str(example.prompt)[: -len(CELL_START)] + example.reference
            special = True
        ids = tokenizer(text, add_special_tokens=special)["input_ids"]
        start = max(i for i, t in enumerate(ids) if t == rule.cell_start_id)
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        used: list[int] = []
        total_repeat = 0.0
        for t in range(start, len(ids) - 1):
            if t > start and ids[t] == rule.cell_end_id:
                break
            if ids[t] in gene_ids:
                used.append(ids[t])
            repeat = float(probs[t, used].sum()) if used else 0.0
            off = 1.0 - float(probs[t, allowed].sum())
            total_repeat += repeat
            position = len(used) + 1
            for a, b in _POSITION_BUCKETS:
                if a <= position <= b:
                    per_bucket[f"{a}-{b}"].append((repeat, off))
        expected_repeats.append(total_repeat)
    out = {
        "cells": len(examples),
        "expected_repeats_per_cell": float(np.mean(expected_repeats)),
    }
    for bucket, values in per_bucket.items():
        if values:
            out[f"repeat_mass_genes_{bucket}"] = float(np.mean([r for r, _ in values]))
            out[f"off_grammar_mass_genes_{bucket}"] = float(np.mean([o for _, o in values]))
    return out


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
    parser.add_argument("--temperature", type=float, default=1.0, help="of generated cells")
    parser.add_argument(
        "--constrained",
        action="store_true",
        help="also generate the cells under constrained decoding and compare",
    )
    parser.add_argument(
        "--skip-annotation", action="store_true", help="validity only (no accuracy, no LR)"
    )
    parser.add_argument(
        "--history", action="store_true", help="print logged eval_gen_* metrics per step"
    )
    parser.add_argument("--pretrain", type=Path, default=None, help="pretraining model dir")
    parser.add_argument(
        "--repeat-mass",
        type=Path,
        nargs="*",
        default=None,
        help="model or checkpoint directories (pretraining or SFT) for the teacher-forced "
        "repeat-mass diagnostic on real cells (pretraining-format texts of --dataset)",
    )
    parser.add_argument("--repeat-mass-cells", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from cellrlhf.data.layout import open_dataset_dir
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

    figures: dict = {}
    if not args.skip_annotation:
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
        pretrain = data.load_pretrain()
        train_ids = list(pretrain["cell_id"])
        contexts = {}
        for text, cell in zip(pretrain["text"], pretrain["cell_id"], strict=True):
            contexts[cell] = (
                text.split(";")[0].split(":")[-1].strip()
            )  # "cell_context: k562; <cell> ..."
        lr_accuracy = _lr_accuracy(args.h5ad, train_ids, test_ids, chosen["cell_context"], contexts)
        figures.update(
            {
                "test_cells": len(examples),
                "model_cell_line_accuracy": model_accuracy,
                "logistic_regression_accuracy": lr_accuracy,
                "accuracy_gap_points": 100 * (model_accuracy - lr_accuracy),
                "annotate_seconds": annotate_s,
            }
        )

    gen_examples = sft_generation_examples(generation, args.n_generate, seed=args.seed)
    decoder = data.decoder()
    evaluator = GenerationEvaluator(
        gen_examples,
        tokenizer,
        decoder,
        max_new_tokens=args.max_new_tokens,
        batch_size=32,
        temperature=args.temperature,
        seed=args.seed,
        constrain_cells=args.constrained,
    )
    start = time.perf_counter()
    validity = evaluator(model)
    generate_s = time.perf_counter() - start
    figures.update({"generated_cells": len(gen_examples), "generate_seconds": generate_s})
    _print(figures)

    columns = ["unconstrained", *(["constrained"] if args.constrained else [])]
    table = {
        key: [validity.get(f"gen_{key}" if c == "unconstrained" else f"gen_constrained_{key}")
              for c in columns]
        for key in _VALIDITY_KEYS
    }  # fmt: skip
    table["reference_mean_length"] = [validity.get("gen_reference_mean_length")] * len(columns)
    breakdowns = {c: _answer_breakdown(evaluator.last_cell_answers[c], decoder.vocab)
                  for c in columns}  # fmt: skip
    for key in ("no_cell_marker_fraction", "valid_fraction_of_opened_cells"):
        table[key] = [breakdowns[c][key] for c in columns]
    reference_bulk = _pseudo_bulk(decoder, [e.reference for e in gen_examples])
    table["pseudo_bulk_pearson_vs_reference"] = [
        float(
            np.corrcoef(_pseudo_bulk(decoder, evaluator.last_cell_answers[c]), reference_bulk)[0, 1]
        )
        for c in columns
    ]
    width = max(map(len, table))
    print(f"\n{'generated cells'.ljust(width)}  " + "  ".join(c.rjust(13) for c in columns))
    for key, values in table.items():
        print(f"{key.ljust(width)}  " + "  ".join(f"{v:13.4f}" for v in values))
    for c in columns:
        print(f"{c}: top unknown words {breakdowns[c]['top_unknown_words']}")
        print(f"{c}: top repeated genes {breakdowns[c]['top_repeated_genes']}")
    figures["validity"] = {c: {k: table[k][i] for k in table} for i, c in enumerate(columns)}
    figures["breakdown"] = breakdowns
    other = {k: v for k, v in validity.items() if not k.startswith(("gen_constrained_",))}
    figures["evaluation_metrics"] = other

    if args.history:
        rows = _history([p for p in (args.pretrain, args.model) if p is not None])
        print("\nlogged generation metrics (trainer_state.json):")
        for row in rows:
            shown = {k.removeprefix("eval_gen_"): round(v, 4) for k, v in row.items()
                     if k.startswith("eval_gen_") and isinstance(v, float)}  # fmt: skip
            print(f"  {row['source']} step {row['step']}: {shown}")
        figures["history"] = rows
    if args.repeat_mass is not None:
        figures["repeat_mass"] = _repeat_mass_table(args, data, gen_examples)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 0


def _repeat_mass_table(args, data, chat_examples) -> dict:
    from cellrlhf.sft.evaluation import pretrain_generation_examples

    genes = data.vocab()
    pretrain = data.load_pretrain()
    pretrain = pretrain["train"] if hasattr(pretrain, "keys") else pretrain
    texts = pretrain_generation_examples(pretrain, args.repeat_mass_cells, seed=args.seed)
    chat = chat_examples[: args.repeat_mass_cells]
    results = {}
    for model_dir in [*args.repeat_mass, args.model]:
        key = f"{model_dir} (pretraining texts)"
        results[key] = _repeat_mass(model_dir, texts, genes, chat=False)
    results[f"{args.model} (test chats)"] = _repeat_mass(args.model, chat, genes, chat=True)
    print("\nteacher-forced mass on real cells (mean per step inside the cell)")
    for key, row in results.items():
        shown = {k: round(v, 4) for k, v in row.items()}
        print(f"  {key}: {shown}")
    return results


def _print(figures: dict) -> None:
    width = max(map(len, figures), default=0)
    for key, value in figures.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key.ljust(width)}  {shown}")


if __name__ == "__main__":
    raise SystemExit(main())
