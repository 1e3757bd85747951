"""Tokens per cell on the real data sets: the cell sentence, and a whole chat example.

For each data set in the data directory the cells are encoded (``encode``, every expressed gene),
a ``gene_tokens`` tokenizer is built from its genes (plus perturbation targets) and a few task
templates, and the script counts tokens of:

- the cell as it appears in a message, ``<cell> G1 ... Gn </cell>``;
- a chat example: system prompt, a user question holding the control cell and the perturbation,
  and the answer cell (what SFT trains on), minus the genes: the prompt overhead.

It also checks, on every cell, that each gene is one token and that decoding gives the text back.
With ``--base-tokenizer`` (a local directory or ``tokenizer.json`` of a pretrained LM) the same is
measured for the ``added_gene_tokens`` and ``genes_as_text`` modes.

Example::

    OMP_NUM_THREADS=1 python benchmarks/bench_tokens_per_cell.py "$CELLRLHF_DATA_DIR"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

DATASETS = {
    # file name: (gene_symbols column, obs column with perturbations or None)
    "perturbench_devel.h5ad": (None, "perturbation"),
    "zhao2021_glioblastoma_panobinostat.h5ad": ("gene_symbol", None),
    "kang2018_liger_600cells.h5ad": (None, None),
}
SYSTEM = "You are a cell biologist. Cells are written as genes ranked by expression."
QUESTION = "Here is a control cell: {cell}\nPredict this cell after the perturbation {pert}."
TEMPLATES = [SYSTEM, QUESTION.format(cell="", pert=""), "What type of cell is this?"]


def chat(cell_in: str, cell_out: str, pert: str) -> list[dict]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTION.format(cell=cell_in, pert=pert)},
        {"role": "assistant", "content": cell_out},
    ]


def load_base(path: str | None):
    if path is None:
        return None
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if path.endswith(".json"):
        return PreTrainedTokenizerFast(tokenizer_file=path)
    return AutoTokenizer.from_pretrained(path)


def measure(tokenizer, sentences, targets, rng) -> dict:
    from cellrlhf.cell2text.markup import format_cell, format_perturbation

    cells = [format_cell(s) for s in sentences]
    n_genes = np.array([len(s.split()) for s in sentences])
    ids = tokenizer(cells, add_special_tokens=False)["input_ids"]
    cell_tokens = np.array([len(x) for x in ids])
    markup = len(tokenizer(format_cell(""), add_special_tokens=False)["input_ids"])
    round_trip = all(tokenizer.decode(x) == c for x, c in zip(ids, cells, strict=True))
    picks = rng.integers(0, len(cells), size=(min(300, len(cells)), 2))
    chat_tokens, overhead = [], []
    for a, b in picks:
        pert = format_perturbation([targets[a % len(targets)]] if targets else ["<control>"])
        text = tokenizer.apply_chat_template(chat(cells[a], cells[b], pert), tokenize=False)
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        chat_tokens.append(n)
        overhead.append(n - cell_tokens[a] - cell_tokens[b])
    return {
        "genes_per_cell_mean": float(n_genes.mean()),
        "cell_tokens_mean": float(cell_tokens.mean()),
        "cell_tokens_p95": float(np.percentile(cell_tokens, 95)),
        "cell_tokens_max": int(cell_tokens.max()),
        "tokens_per_gene": float((cell_tokens - markup).sum() / max(n_genes.sum(), 1)),
        "chat_tokens_mean": float(np.mean(chat_tokens)),
        "chat_overhead_mean": float(np.mean(overhead)),
        "round_trip": bool(round_trip),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "data_dir",
        nargs="?",
        default=os.environ.get("CELLRLHF_DATA_DIR"),
        help="directory with the .h5ad files (default: $CELLRLHF_DATA_DIR)",
    )
    parser.add_argument("--base-tokenizer", help="pretrained LM tokenizer (dir or tokenizer.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("give the data directory or set CELLRLHF_DATA_DIR")

    import anndata as ad

    from cellrlhf.cell2text.encoding import encode
    from cellrlhf.cell2text.markup import split_perturbation
    from cellrlhf.cell2text.tokenizer import (
        add_gene_tokens,
        build_cell_tokenizer,
        genes_as_text_tokenizer,
    )
    from cellrlhf.cell2text.vocab import GeneVocab

    base = load_base(args.base_tokenizer)
    rng = np.random.default_rng(args.seed)
    results = {}
    for name, (symbols, pert_column) in DATASETS.items():
        path = Path(args.data_dir) / name
        if not path.exists():
            print(f"skipping {name}: not in {args.data_dir}")
            continue
        adata = ad.read_h5ad(path)
        encode(adata, gene_symbols=symbols)
        sentences = list(adata.obs["cell_sentence"])
        vocab = GeneVocab.from_adata(adata, gene_symbols=symbols)
        targets = []
        if pert_column:
            labels = adata.obs[pert_column].astype(str).unique()
            targets = sorted({t for p in labels if p != "control" for t in split_perturbation(p)})
        start = time.perf_counter()
        tokenizers = {
            "gene_tokens": build_cell_tokenizer(vocab, extra_genes=targets, texts=TEMPLATES)
        }
        build_s = time.perf_counter() - start
        if base is not None:
            tokenizers["added_gene_tokens"] = add_gene_tokens(base, [*vocab, *targets]).tokenizer
            tokenizers["genes_as_text"] = genes_as_text_tokenizer(base)
        for mode, tokenizer in tokenizers.items():
            row = measure(tokenizer, sentences, targets, rng)
            row.update(n_cells=adata.n_obs, n_genes=len(vocab), vocab_size=len(tokenizer))
            results[f"{name} / {mode}"] = row
        results[f"{name} / gene_tokens"]["build_s"] = build_s

    header = (
        f"{'data set / mode':58s} {'cells':>6s} {'genes':>6s} {'genes/cell':>10s} "
        f"{'cell tok':>9s} {'p95':>6s} {'tok/gene':>8s} {'chat tok':>9s} {'overhead':>8s} "
        f"{'exact':>5s}"
    )
    print(header)
    for key, r in results.items():
        print(
            f"{key:58s} {r['n_cells']:6d} {r['n_genes']:6d} {r['genes_per_cell_mean']:10.1f} "
            f"{r['cell_tokens_mean']:9.1f} {r['cell_tokens_p95']:6.0f} {r['tokens_per_gene']:8.2f} "
            f"{r['chat_tokens_mean']:9.1f} {r['chat_overhead_mean']:8.1f} "
            f"{'yes' if r['round_trip'] else 'NO':>5s}"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))
    return 0 if all(r["round_trip"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
