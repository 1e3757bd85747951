"""Interleaved A/B of the sentence decoder in two checkouts (e.g. before and after a change).

Each round runs one fresh process per checkout, alternating, so both see the same machine load;
each process decodes the same synthetic 20,000 sentences (``bench_decode``'s workload) three
times. Reported: best wall and CPU seconds per checkout and thread count, and the ratio.

Example (the previous commit in a worktree)::

    git worktree add /tmp/before HEAD~1
    OMP_NUM_THREADS=1 python benchmarks/bench_decode_ab.py --a /tmp/before --b .
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
import numba, numpy as np
sys.path.insert(0, sys.argv[1])
from benchmarks.bench_decode import synthetic_sentences, synthetic_symbols
from cellrlhf.cell2text.decoder import ExpressionDecoder
from cellrlhf.cell2text.vocab import GeneVocab

n_cells, per_cell, threads = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
genes = synthetic_symbols(20_000, rng)
sentences = synthetic_sentences(genes, n_cells, per_cell, rng)
decoder = ExpressionDecoder(GeneVocab(tuple(genes)), intercept=4.9, slope=-1.55)
decoder.decode(sentences[:100])  # compile or load the numba cache
numba.set_num_threads(threads)
wall, cpu = [], []
for _ in range(3):
    start, start_cpu = time.perf_counter(), time.process_time()
    matrix, _ = decoder.decode(sentences)
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
    del matrix
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall": min(wall), "cpu": min(cpu), "peak_rss_mb": peak}))
"""


def run_child(checkout: Path, n_cells: int, per_cell: int, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    args = [str(checkout), str(n_cells), str(per_cell), str(threads)]
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"decode in {checkout} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="checkout A (e.g. before)")
    parser.add_argument("--b", type=Path, required=True, help="checkout B (e.g. after)")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n-cells", type=int, default=20_000)
    parser.add_argument("--genes-per-cell", type=int, default=2_000)
    args = parser.parse_args(argv)
    checkouts = {"A": args.a.resolve(), "B": args.b.resolve()}
    for threads in args.threads:
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for name, checkout in checkouts.items():
                got = run_child(checkout, args.n_cells, args.genes_per_cell, threads)
                print(f"threads {threads} {name}: {json.dumps(got)}", flush=True)
                if name not in best or got["wall"] < best[name]["wall"]:
                    best[name] = got
        a, b = best["A"], best["B"]
        print(
            f"threads {threads}: best wall A {a['wall']:.3f} s, B {b['wall']:.3f} s "
            f"(A/B {a['wall'] / b['wall']:.2f}x); CPU A {a['cpu']:.3f} s, B {b['cpu']:.3f} s; "
            f"peak RSS A {a['peak_rss_mb']:.0f} MB, B {b['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
