"""The sampler with and without encoding a shared prompt once, side by side in one process.

``cellrlhf evaluate`` answers every held-out prompt hundreds of times; each batch repeats one
prompt. The workload: the ``small`` model preset (``configs/model/small.yaml``, random weights:
speed does not depend on them) on a cell tokenizer of 500 genes, one prompt of a control cell
and two evidence pseudo-bulks (~300 tokens, like a McFaline ``other_contexts`` prompt), and 64
cells of 50-60 genes sampled under the cell grammar per batch. Rounds alternate three ways so
all see the same machine load: every row's prompt encoded (``Sampler(share_prompt=False)``), the
shared prompt encoded once with the cache grown by concatenation, and the sampler as it is (room
for the answer reserved). Reported: best and median seconds per batch, the speed-up, and whether
each way sampled the same tokens as encoding every row.

Example::

    OMP_NUM_THREADS=1 python benchmarks/bench_sampler.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from unittest.mock import patch

REPO = Path(__file__).resolve().parents[1]


def build(n_genes: int, prompt_genes: int, seed: int = 0):
    """The random ``small`` model, its tokenizer, the gene vocabulary and one prompt."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from cellrlhf.cell2text.tokenizer import build_cell_tokenizer
    from cellrlhf.cell2text.vocab import GeneVocab
    from cellrlhf.sft.model_factory import load_model_config

    genes = GeneVocab(tuple(f"G{i}" for i in range(n_genes)))
    question = "Predict the cell after knocking down X. Measured in the other lines:"
    tokenizer = build_cell_tokenizer(genes, texts=[question, "control cell", "line A", "line B"])
    config = load_model_config(REPO / "configs" / "model" / "small.yaml", tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    rng = np.random.default_rng(seed)
    blocks = [
        " ".join(genes.genes[i] for i in rng.choice(n_genes, prompt_genes, replace=False))
        for _ in range(3)
    ]
    prompt = [
        {
            "role": "user",
            "content": f"control cell <cell> {blocks[0]} </cell> {question} line A <cell> "
            f"{blocks[1]} </cell> line B <cell> {blocks[2]} </cell>",
        }
    ]
    return model, tokenizer, genes, prompt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cells", type=int, default=64, help="cells per batch (one prompt)")
    parser.add_argument("--genes", type=int, default=500, help="genes of the vocabulary")
    parser.add_argument("--prompt-genes", type=int, default=95, help="genes per prompt block")
    parser.add_argument("--answer-genes", type=int, default=50, help="least genes per cell")
    args = parser.parse_args(argv)

    import torch

    from cellrlhf.sampling import GenerationSettings, Sampler, prefix_cache

    torch.set_num_threads(1)
    model, tokenizer, genes, prompt = build(args.genes, args.prompt_genes)
    settings = GenerationSettings(
        max_new_tokens=args.answer_genes + 12, temperature=1.0, seed=0, constrain_cells=True,
        single_cell_answer=True, min_genes=args.answer_genes,
    )  # fmt: skip
    every_row = Sampler(model, tokenizer, cell_genes=genes, share_prompt=False)
    shared = Sampler(model, tokenizer, cell_genes=genes)
    ways = {  # name: (sampler, whether the cache gets room for the answer up front)
        "every row encoded": (every_row, True),
        "shared prompt once, cache grown by concatenation": (shared, False),
        "shared prompt once, room reserved (the sampler)": (shared, True),
    }
    n_prompt = len(shared.prompt_ids(prompt))
    times = {name: [] for name in ways}
    answers = {}
    for _ in range(args.rounds):
        for name, (sampler, reserve) in ways.items():
            keep = nullcontext() if reserve else patch(f"{prefix_cache.__name__}._reserve")
            with keep:
                start = time.perf_counter()
                done = sampler.generate([prompt] * args.cells, settings, batch_size=args.cells)
                times[name].append(time.perf_counter() - start)
            answers[name] = [c.token_ids for c in done]
    n_answer = statistics.mean(len(a) for a in answers["every row encoded"])
    print(f"prompt {n_prompt} tokens, answers {n_answer:.0f} tokens, {args.cells} cells a batch, "
          f"{args.rounds} rounds, 1 thread")  # fmt: skip
    base = statistics.median(times["every row encoded"])
    print("| way | best s / batch | median s / batch | speed-up (median) | same tokens |")
    print("|---|---:|---:|---:|---|")
    for name, values in times.items():
        same = answers[name] == answers["every row encoded"]
        median = statistics.median(values)
        print(f"| {name} | {min(values):.2f} | {median:.2f} | {base / median:.2f}x | {same} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
