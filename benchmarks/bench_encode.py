"""Encode throughput: cellrlhf's cell sentence encoder vs Cell2Sentence 1.2.0, side by side.

Workload (the anchor's): ``--n-cells`` x ``--n-genes`` (20,000 x 20,000), about ``--nnz`` (2,000)
expressed genes per cell with gene-specific detection rates, counts ``1 + NegativeBinomial(1,
0.4)`` (heavy ties: ~40% of a cell's genes have count 1), then ``normalize_total`` (1e4) and
``log1p`` in float32. Gene symbols are synthetic but shaped like HGNC symbols (mean ~6
characters), so sentences have the length of real ones.

Measured in one run:

1. cellrlhf ``encode(adata)`` (full sentences as Python strings in ``obs``), warm, best of
   ``--repeats``; its stages (ranking, sentence bytes, Python strings); the Arrow-only path
   (``iter_sentences`` on the in-memory AnnData) and the numba JIT compile time (cold cache, in a
   subprocess) separately.
2. Cell2Sentence ``CSData.adata_to_arrow`` on the same .h5ad, in the Python given by
   ``--c2s-python`` (a virtual environment with ``cell2sentence==1.2.0``), and the ratio.
3. Streaming ``write_sentences`` of backed .h5ad files (the 20k one and a ``--stream-cells`` one,
   written to ``--tmp-dir``) to Parquet, each in a fresh subprocess reporting wall time and peak
   RSS (``VmHWM`` of the child process).

Example::

    OMP_NUM_THREADS=1 python benchmarks/bench_encode.py --c2s-python /path/to/c2s-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

_C2S_DRIVER = r"""
import json, sys, time
import anndata as ad
from cell2sentence import CSData

adata = ad.read_h5ad(sys.argv[1])
n = int(sys.argv[2])
if n < adata.n_obs:
    adata = adata[:n].copy()
wall, cpu = time.perf_counter(), time.process_time()
arrow_ds, _ = CSData.adata_to_arrow(adata, random_state=42)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"seconds": wall, "cpu_seconds": cpu, "n_cells": len(arrow_ds)}))
"""

_STREAM_DRIVER = r"""
import json, sys, time
from cellrlhf.cell2text.stream import write_sentences

def vm_hwm_mb():  # peak RSS of this process (reset at exec, unlike ru_maxrss)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

path, out, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = vm_hwm_mb()
wall, cpu = time.perf_counter(), time.process_time()
manifest = write_sentences(path, out, chunk_size=chunk, overwrite=True, progress=False)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"seconds": wall, "cpu_seconds": cpu, "n_cells": manifest["n_cells"],
                  "peak_rss_mb": vm_hwm_mb(), "rss_after_imports_mb": base}))
"""

_JIT_DRIVER = r"""
import json, time
import anndata as ad, numpy as np, pandas as pd, scipy.sparse as sp
from cellrlhf.cell2text.encoding import encode
X = sp.random(64, 32, density=0.3, format="csr", dtype=np.float32, random_state=0)
adata = ad.AnnData(X=X, var=pd.DataFrame(index=[f"G{i}" for i in range(32)]))
adata.obs_names = [f"c{i}" for i in range(64)]
start = time.perf_counter(); encode(adata); first = time.perf_counter() - start
start = time.perf_counter(); encode(adata); second = time.perf_counter() - start
print(json.dumps({"first": first, "second": second}))
"""


# --------------------------------------------------------------------------- data
def synthetic_symbols(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct HGNC-like symbols: 2-5 letters, a 1-3 digit number, rare letter suffix."""
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    seen: dict[str, None] = {}
    while len(seen) < n:
        prefix = "".join(rng.choice(letters, rng.integers(2, 6)))
        number = str(rng.integers(1, 10 ** rng.integers(1, 4)))
        suffix = rng.choice(letters) if rng.random() < 0.2 else ""
        seen.setdefault(prefix + number + suffix)
    return list(seen)


def detection_rates(n_genes: int, nnz: int, rng: np.random.Generator) -> np.ndarray:
    rates = rng.beta(0.3, 2.7, n_genes)
    return np.clip(rates * (nnz / rates.sum()), 0.0, 1.0).astype(np.float32)


def expression_block(n_cells: int, rates: np.ndarray, rng: np.random.Generator) -> sp.csr_matrix:
    """normalize_total(1e4) + log1p of tied counts, float32 CSR."""
    mask = rng.random((n_cells, len(rates)), dtype=np.float32) < rates
    X = sp.csr_matrix(mask, dtype=np.float32)
    X.data = (1 + rng.negative_binomial(1, 0.4, X.nnz)).astype(np.float32)
    totals = np.asarray(X.sum(axis=1)).ravel()
    scale = np.repeat((1e4 / np.maximum(totals, 1)).astype(np.float32), np.diff(X.indptr))
    X.data = np.log1p(X.data * scale)
    return X


def make_adata(n_cells: int, n_genes: int, nnz: int, seed: int):
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    genes = synthetic_symbols(n_genes, rng)
    rates = detection_rates(n_genes, nnz, rng)
    X = sp.vstack(
        [expression_block(min(1000, n_cells - s), rates, rng) for s in range(0, n_cells, 1000)],
        format="csr",
    )
    obs = pd.DataFrame(index=[f"cell_{i:07d}" for i in range(n_cells)])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))


def write_backed_h5ad(path: Path, n_cells: int, n_genes: int, nnz: int, seed: int) -> None:
    """Write a CSR .h5ad block by block (bounded memory), readable by anndata."""
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    rng = np.random.default_rng(seed)
    genes = synthetic_symbols(n_genes, rng)
    rates = detection_rates(n_genes, nnz, rng)
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "obs", pd.DataFrame(index=[f"cell_{i:07d}" for i in range(n_cells)]))
        write_elem(f, "var", pd.DataFrame(index=genes))
        group = f.create_group("X")
        group.attrs["encoding-type"] = "csr_matrix"
        group.attrs["encoding-version"] = "0.1.0"
        group.attrs["shape"] = (n_cells, n_genes)
        data = group.create_dataset("data", (0,), np.float32, maxshape=(None,), chunks=(1 << 20,))
        indices = group.create_dataset(
            "indices", (0,), np.int32, maxshape=(None,), chunks=(1 << 20,)
        )
        indptr = [0]
        for start in range(0, n_cells, 1000):
            block = expression_block(min(1000, n_cells - start), rates, rng)
            old = data.shape[0]
            data.resize((old + block.nnz,))
            indices.resize((old + block.nnz,))
            data[old:] = block.data
            indices[old:] = block.indices
            indptr.extend((block.indptr[1:] + old).tolist())
        group.create_dataset("indptr", data=np.asarray(indptr, dtype=np.int64))
        for key in ("layers", "obsm", "varm", "obsp", "varp", "uns"):
            write_elem(f, key, {})


# --------------------------------------------------------------------------- timings
def best_of(repeats: int, fn) -> tuple[float, float]:
    """(best wall seconds, CPU seconds of that run)."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best = min(best, (wall, cpu))
    return best


def time_cellrlhf(adata, repeats: int) -> dict:
    import numba
    import pyarrow as pa

    from cellrlhf.cell2text.encoding import GeneNameBytes, _to_python_strings, encode
    from cellrlhf.cell2text.ranking import cell_keys, gene_tie_keys, rank_expressed
    from cellrlhf.cell2text.sentence_kernels import rank_sentence_bytes
    from cellrlhf.cell2text.stream import iter_sentences

    encode(adata[:200].copy())  # warm (loads the numba cache)
    genes = list(adata.var_names)
    tie_keys, names = gene_tie_keys(genes), GeneNameBytes.from_genes(genes)
    keys = cell_keys(adata.obs_names)
    X = adata.X
    from cellrlhf.cell2text.encoding import sentences_to_arrow

    out: dict = {"threads": numba.get_num_threads()}
    out["encode"] = best_of(repeats, lambda: encode(adata))
    ranked = rank_expressed(X, keys, genes=tie_keys)
    out["rank"] = best_of(repeats, lambda: rank_expressed(X, keys, genes=tie_keys))
    column = sentences_to_arrow(ranked, names)
    out["bytes"] = best_of(repeats, lambda: sentences_to_arrow(ranked, names))
    out["pystr"] = best_of(repeats, lambda: _to_python_strings(column))
    first = rank_sentence_bytes(X, keys, tie_keys=tie_keys, names=names)[1]
    out["fused_fresh"] = best_of(
        repeats, lambda: rank_sentence_bytes(X, keys, tie_keys=tie_keys, names=names)
    )
    out["fused"] = best_of(
        repeats,
        lambda: rank_sentence_bytes(X, keys, tie_keys=tie_keys, names=names, buffer=first),
    )
    out["arrow"] = best_of(
        repeats,
        lambda: pa.concat_tables(iter_sentences(adata, chunk_size=10_000, progress=False)),
    )
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    out["encode_1thread"] = best_of(repeats, lambda: encode(adata))
    numba.set_num_threads(before)
    out["load"] = os.getloadavg()[0]
    out["mean_sentence_bytes"] = float(np.mean([len(s) for s in adata.obs["cell_sentence"]]))
    return out


def run_json(cmd: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


# --------------------------------------------------------------------------- report
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-cells", type=int, default=20_000)
    parser.add_argument("--n-genes", type=int, default=20_000)
    parser.add_argument("--nnz", type=int, default=2_000, help="expressed genes per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--c2s-python", default=None, help="python of a cell2sentence venv")
    parser.add_argument("--c2s-cells", type=int, default=None, help="anchor cells (default all)")
    parser.add_argument("--stream-cells", type=int, default=200_000, help="0 skips streaming")
    parser.add_argument(
        "--stream-file",
        default=None,
        help="backed .h5ad for the streaming run: reused when it exists, else written there and "
        "kept (default: a temporary file)",
    )
    parser.add_argument("--chunk-size", type=int, default=10_000)
    parser.add_argument("--tmp-dir", default=tempfile.gettempdir(), help="for the .h5ad files")
    parser.add_argument("--keep-files", action="store_true")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "figures" / "cell2text_encode.md")
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_encode_", dir=args.tmp_dir))
    load_start = os.getloadavg()
    rows: list[tuple[str, str]] = []
    print(f"generating {args.n_cells} x {args.n_genes} cells ...", flush=True)
    adata = make_adata(args.n_cells, args.n_genes, args.nnz, args.seed)
    nnz_per_cell = adata.X.nnz / adata.n_obs
    h5ad_small = work / "cells_small.h5ad"
    adata.write_h5ad(h5ad_small)

    jit = run_json(
        [sys.executable, "-c", _JIT_DRIVER],
        env=child_env(NUMBA_CACHE_DIR=str(work / "numba_cold")),
    )
    jit_cached = run_json(
        [sys.executable, "-c", _JIT_DRIVER],
        env=child_env(NUMBA_CACHE_DIR=str(work / "numba_cold")),
    )
    ours = time_cellrlhf(adata, args.repeats)
    n = adata.n_obs
    print(f"cellrlhf encode: {n / ours['encode'][0]:,.0f} cells/s", flush=True)

    anchor = None
    if args.c2s_python:
        n_anchor = min(args.c2s_cells or n, n)
        print(f"cell2sentence adata_to_arrow on {n_anchor} cells ...", flush=True)
        anchor = run_json(
            [args.c2s_python, "-c", _C2S_DRIVER, str(h5ad_small), str(n_anchor)],
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""},
        )
        anchor["rate"] = anchor["n_cells"] / anchor["seconds"]
        anchor["cpu_rate"] = anchor["n_cells"] / anchor["cpu_seconds"]
        # ours again right after the anchor: the machine is shared, its load drifts
        again = time_cellrlhf(adata, args.repeats)
        for key in ("encode", "encode_1thread"):
            ours[key] = min(ours[key], again[key])
    rate = n / ours["encode"][0]

    streams = []
    stream_inputs = [(n, h5ad_small)]
    if args.stream_cells:
        big = Path(args.stream_file) if args.stream_file else work / "cells_stream.h5ad"
        if not big.exists():
            print(f"writing a backed {args.stream_cells}-cell .h5ad to {big} ...", flush=True)
            write_backed_h5ad(big, args.stream_cells, args.n_genes, args.nnz, args.seed + 1)
        stream_inputs.append((args.stream_cells, big))
    for n_cells, path in stream_inputs:
        print(f"streaming {n_cells} cells to Parquet ...", flush=True)
        result = run_json(
            [sys.executable, "-c", _STREAM_DRIVER, str(path), str(work / f"out_{n_cells}"),
             str(args.chunk_size)],
            env=child_env(),
        )  # fmt: skip
        result["file_gb"] = path.stat().st_size / 1e9
        result["parquet_gb"] = (
            sum(p.stat().st_size for p in (work / f"out_{n_cells}").glob("*")) / 1e9
        )
        streams.append(result)
    load_end = os.getloadavg()
    print(json.dumps({"ours": ours, "anchor": anchor, "streams": streams}, default=str), flush=True)

    def fmt_rate(seconds: float, cells: int) -> str:
        return f"{cells / seconds:,.0f}"

    def cpu_ns(cpu_seconds: float) -> str:
        return f"{cpu_seconds / adata.X.nnz * 1e9:.1f}"

    threads = ours["threads"]
    rows.append(
        (f"cellrlhf `encode` (obs strings), {threads} threads", fmt_rate(ours["encode"][0], n),
         cpu_ns(ours["encode"][1]))
    )  # fmt: skip
    rows.append(
        ("cellrlhf `encode`, 1 thread", fmt_rate(ours["encode_1thread"][0], n),
         cpu_ns(ours["encode_1thread"][1]))
    )  # fmt: skip
    rows.append(
        ("cellrlhf `iter_sentences` (Arrow, no Python strings)", fmt_rate(ours["arrow"][0], n),
         cpu_ns(ours["arrow"][1]))
    )  # fmt: skip
    rows.append(
        ("  stage: rank + write sentence bytes (`rank_sentence_bytes`, one pass)",
         fmt_rate(ours["fused"][0], n), cpu_ns(ours["fused"][1]))
    )  # fmt: skip
    rows.append(
        ("  same, into fresh (unmapped) memory", fmt_rate(ours["fused_fresh"][0], n),
         cpu_ns(ours["fused_fresh"][1]))
    )  # fmt: skip
    rows.append(
        ("  stage: Arrow -> Python `str`", fmt_rate(ours["pystr"][0], n), cpu_ns(ours["pystr"][1]))
    )
    rows.append(
        ("  (top_k route) `rank_expressed`", fmt_rate(ours["rank"][0], n), cpu_ns(ours["rank"][1]))
    )
    rows.append(
        ("  (top_k route) ranked -> sentence bytes", fmt_rate(ours["bytes"][0], n),
         cpu_ns(ours["bytes"][1]))
    )  # fmt: skip
    if anchor:
        anchor_name = f"cell2sentence 1.2.0 `adata_to_arrow` ({anchor['n_cells']} cells)"
        rows.append(
            (anchor_name, f"{anchor['rate']:,.0f}",
             cpu_ns(anchor["cpu_seconds"] * n / anchor["n_cells"]))
        )  # fmt: skip
    for s in streams:
        rows.append(
            (
                f"stream .h5ad -> Parquet, {s['n_cells']:,} cells",
                fmt_rate(s["seconds"], s["n_cells"]),
                cpu_ns(s["cpu_seconds"] * n / s["n_cells"]),
            )
        )

    lines = [
        "# cell2text encode throughput",
        "",
        f"- date: {date.today().isoformat()}; machine: {os.cpu_count()}-core CPU "
        f"({platform.processor() or platform.machine()}), shared with other jobs "
        f"(load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end)",
        f"- data: {n:,} cells x {adata.n_vars:,} genes, {nnz_per_cell:,.0f} non-zeros per cell, "
        "counts 1 + NB(1, 0.4), normalize_total + log1p (float32); mean sentence "
        f"{ours['mean_sentence_bytes']:,.0f} bytes",
        f"- command: `OMP_NUM_THREADS=1 python benchmarks/bench_encode.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- best of {args.repeats} warm runs; numba JIT compile on a cold cache "
        f"{jit['first']:.1f} s (first call), {jit_cached['first']:.2f} s loading the cache",
        "",
        "| what | cells/s (wall) | CPU ns per non-zero |",
        "| --- | ---: | ---: |",
        *[f"| {name} | {value} | {cpu} |" for name, value, cpu in rows],
        "",
    ]
    if anchor:
        anchor_cpu = anchor["cpu_seconds"] / anchor["n_cells"]
        one = ours["encode_1thread"]
        lines += [
            f"**Ratio (encode / cell2sentence, wall clock): {rate / anchor['rate']:.1f}x with "
            f"{threads} threads, {n / one[0] / anchor['rate']:.1f}x with 1 thread**; CPU time "
            f"per cell: cellrlhf {ours['encode'][1] / n * 1e6:.1f} us ({threads} threads), "
            f"{one[1] / n * 1e6:.1f} us (1 thread), cell2sentence {anchor_cpu * 1e6:.1f} us "
            f"(CPU ratio {anchor_cpu / (ours['encode'][1] / n):.1f}x / "
            f"{anchor_cpu / (one[1] / n):.1f}x). Load average when ours was timed: "
            f"{ours['load']:.1f}.",
            "",
        ]
    for s in streams:
        lines.append(
            f"- streaming {s['n_cells']:,} cells ({s['file_gb']:.2f} GB .h5ad -> "
            f"{s['parquet_gb']:.2f} GB Parquet, chunk {args.chunk_size}): {s['seconds']:.1f} s, "
            f"peak RSS {s['peak_rss_mb']:,.0f} MB (after imports {s['rss_after_imports_mb']:,.0f} MB)"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = out.read_text() if out.exists() else ""
    marker = "\n## Reading these numbers"  # the hand-written part is kept on reruns
    out.write_text(text + (previous[previous.index(marker) :] if marker in previous else ""))
    if not args.keep_files:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
