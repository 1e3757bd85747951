"""Throughput and peak memory of the data stage on a large backed .h5ad.

Compares, on the same SIMULATED file streamed from disk, each in a fresh process (peak RSS of
that process; a tiny warm-up build first so numba compilation is not timed):

* ``cell2text write_sentences``: cell2text's own streaming encoder (sentences -> Parquet);
* ``data build: pretrain``: ``cellrlhf data`` building only the pretraining corpus;
* ``data build: pretrain+sft+rl``: every dataset (pretraining corpus, the five instruction
  tasks with their default caps, RL prompt sets with references).

    python benchmarks/bench_data_build.py --n-cells 200000 --n-genes 1000 --top-k 100

Writes a table to stdout and ``benchmarks/figures/data_build.md`` (+ ``data_build.png``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("encode", "pretrain", "full")
LABELS = {
    "encode": "cell2text write_sentences",
    "pretrain": "data build: pretrain",
    "full": "data build: pretrain+sft+rl",
}


def _config_spec(path: Path, top_k: int, mode: str) -> dict:
    tasks = {
        "cell_annotation": {"max_examples": 2000, "max_eval_examples": 500},
        "cell_generation": {"max_examples": 1000, "max_eval_examples": 200},
        "perturbation_response": {
            "max_examples": 4000,
            "max_eval_examples": 500,
            "context": "mixed",
        },
        "perturbation_effect": {"per_group": 2},
        "perturbation_identification": {"max_examples": 2000, "max_eval_examples": 500},
    }
    full = mode == "full"
    return {
        "name": "bench",
        "progress": False,
        "source": {"path": str(path)},
        "schema": {
            "columns": {
                "perturbation": "perturbation",
                "cell_context": "cell_context",
                "perturbation_type": "perturbation_type",
                "dose": "dose",
                "batch": "batch",
            }
        },
        "expression": {"transform": "log1p_cp10k", "chunk_size": 10000},
        "sentences": {"top_k": top_k},
        "split": {"kind": "unseen_single", "test_fraction": 0.25, "validation_fraction": 0.05},
        "pretrain": {"metadata_prefix": ["cell_context"]},
        "sft": {"enabled": full, "context_noun": "cell_line", "tasks": tasks if full else {}},
        "rl": {"enabled": full},
        "decoder": {"max_cells": 20000},
    }


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, reset by exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(mode: str, path: Path, out: Path, top_k: int, n_warm: Path) -> dict:
    if mode == "encode":
        from cellrlhf.cell2text.stream import write_sentences

        write_sentences(n_warm, out / "warm", top_k=top_k, progress=False, overwrite=True)
        start, cpu = time.perf_counter(), time.process_time()
        manifest = write_sentences(
            path, out / "encode", top_k=top_k, progress=False, overwrite=True
        )
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        n_cells = manifest["n_cells"]
        rows = n_cells
    else:
        from cellrlhf.data.build import build_datasets
        from cellrlhf.data.config import DataBuildConfig

        build_datasets(
            DataBuildConfig.from_dict(_config_spec(n_warm, top_k, mode)), out_dir=out / "warm"
        )
        config = DataBuildConfig.from_dict(_config_spec(path, top_k, mode))
        start, cpu = time.perf_counter(), time.process_time()
        result = build_datasets(config, out_dir=out / mode)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        n_cells = result.manifest["source"]["n_cells_selected"]
        counts = result.manifest["counts"]
        rows = (
            counts["pretrain"]
            + sum(counts.get("sft", {}).values())
            + sum(counts.get("rl", {}).values())
        )
    peak_mb = _peak_rss_mb()
    return {
        "mode": mode,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "n_cells": n_cells,
        "rows": rows,
        "peak_mb": peak_mb,
    }


def _simulate(path: Path, n_cells: int, n_genes: int, seed: int) -> None:
    from cellrlhf.data.simulate import simulate_perturbation_data

    adata = simulate_perturbation_data(
        n_cells,
        n_genes,
        n_perturbations=24,
        n_combinations=8,
        n_contexts=3,
        add_log1p_layer=False,
        seed=seed,
    )
    adata.write_h5ad(path)


def _run_child(args, mode: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--n-cells",
        str(args.n_cells),
        "--n-genes",
        str(args.n_genes),
        "--top-k",
        str(args.top_k),
        "--workdir",
        str(args.workdir),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _write_report(args, results: list[dict], command: str) -> str:
    encode = next(r for r in results if r["mode"] == "encode")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Data stage: build throughput and peak memory",
        "",
        f"- Date: {dt.date.today().isoformat()}; machine: 2-core CPU shared with other jobs "
        f"(1-min load average {load:.1f} at the end of the run), {platform.machine()}, Python "
        f"{platform.python_version()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.",
        f"- Input: SIMULATED screen, {args.n_cells:,} cells x {args.n_genes:,} genes, raw counts "
        f"(CSR, backed .h5ad, streamed from disk), top_k = {args.top_k}; references, DE and "
        "decoder on log1p(CP10k); full build = pretraining corpus + 5 instruction tasks (default "
        "caps) + RL prompt sets, unseen_single split.",
        "- Each run is a fresh process after a small warm-up build (numba compiled). Steps are "
        f"repeated {args.repeats}x, interleaved; the table shows the fastest run (every run's wall "
        "seconds in the last column) and the largest peak memory (VmHWM, imports included).",
        "- CPU seconds (user + system, all threads of the process) are given beside wall seconds: "
        "on a loaded shared machine wall time mostly measures waiting for a core.",
        f"- Command: `{command}`",
        "",
        "| step | wall s | CPU s | cells/s (wall) | rows written | peak RSS (MB) "
        "| time vs encode (wall / CPU) | all runs, wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        rate = r["n_cells"] / r["seconds"]
        wall_ratio = r["seconds"] / encode["seconds"]
        cpu_ratio = r["cpu_seconds"] / encode["cpu_seconds"]
        runs = ", ".join(f"{x:.1f}" for x in r.get("all_seconds", [r["seconds"]]))
        lines.append(
            f"| {LABELS[r['mode']]} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {rate:,.0f} "
            f"| {r['rows']:,} | {r['peak_mb']:,.0f} | {wall_ratio:.2f} / {cpu_ratio:.2f} | {runs} |"
        )
    full = next((r for r in results if r["mode"] == "full"), None)
    if full:
        wall_ratio = full["seconds"] / encode["seconds"]
        cpu_ratio = full["cpu_seconds"] / encode["cpu_seconds"]
        lines += [
            "",
            "Targets: full build within 2x of cell2text's encode time - wall "
            f"{wall_ratio:.2f}x ({'met' if wall_ratio <= 2.0 else 'MISSED'}), CPU "
            f"{cpu_ratio:.2f}x ({'met' if cpu_ratio <= 2.0 else 'MISSED'}); peak memory under "
            f"2 GB: {'met' if full['peak_mb'] < 2048 else 'MISSED'} ({full['peak_mb']:,.0f} MB).",
        ]
    lines += [
        "",
        "Where the build's extra time goes (cProfile on CPU time, 200k cells): the single pass "
        "shares cell2text's read + rank + sentence-writing cost; on top come the per-group sums "
        "(numba) and log1p(CP10k) transform, the pretraining text assembly (Arrow compute), the "
        "decoder fit on up to 20,000 training cells (it ranks them again), the DE tests, the "
        "instruction rows (fixed cost per example, not per cell), writing the datasets and the "
        "leakage check, which re-reads the saved files. Wall times on this shared machine vary "
        "by up to 60 % between identical runs (last column); the CPU ratio is the steadier one.",
    ]
    return "\n".join(lines) + "\n"


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    names = [LABELS[r["mode"]].replace("data build: ", "build: ") for r in results]
    axes[0].barh(names, [r["n_cells"] / r["seconds"] for r in results], color="#4c72b0")
    axes[0].set_xlabel("cells / s (higher is better)")
    axes[1].barh(names, [r["peak_mb"] for r in results], color="#dd8452")
    axes[1].axvline(2048, color="k", linestyle="--", linewidth=1)
    axes[1].set_xlabel("peak RSS, MB (2 GB target dashed)")
    axes[1].set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=200_000)
    parser.add_argument("--n-genes", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per step (best is kept)")
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / "benchmarks" / "results" / "data_build"
    )
    parser.add_argument("--figures", type=Path, default=ROOT / "benchmarks" / "figures")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:  # run from a checkout without installing
        sys.path.insert(0, str(ROOT))
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"sim_{args.n_cells}x{args.n_genes}_s{args.seed}.h5ad"
    warm = args.workdir / f"sim_warm_{args.n_genes}.h5ad"
    if args.child:
        out = args.workdir / "out"
        out.mkdir(exist_ok=True)
        print(json.dumps(_measure(args.child, path, out, args.top_k, warm)))
        return 0
    if not path.exists():
        print(f"simulating {args.n_cells:,} cells x {args.n_genes:,} genes -> {path}", flush=True)
        _simulate(path, args.n_cells, args.n_genes, args.seed)
    if not warm.exists():
        _simulate(warm, 2000, args.n_genes, args.seed + 1)
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for repeat in range(args.repeats):  # interleaved, so load changes hit every step alike
        for mode in MODES:
            print(f"run {repeat + 1}/{args.repeats}: {LABELS[mode]} ...", flush=True)
            runs[mode].append(_run_child(args, mode))
    results = []
    for mode in MODES:
        best = min(runs[mode], key=lambda r: r["seconds"])
        results.append(
            {
                **best,
                "all_seconds": [r["seconds"] for r in runs[mode]],
                "peak_mb": max(r["peak_mb"] for r in runs[mode]),
            }
        )
    shutil.rmtree(args.workdir / "out", ignore_errors=True)
    settings = (
        ("n_cells", args.n_cells),
        ("n_genes", args.n_genes),
        ("top_k", args.top_k),
        ("repeats", args.repeats),
    )
    command = "OMP_NUM_THREADS=1 python benchmarks/bench_data_build.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in settings
    )
    report = _write_report(args, results, command)
    print(report)
    args.figures.mkdir(parents=True, exist_ok=True)
    (args.figures / "data_build.md").write_text(
        report + "\n![throughput and memory](data_build.png)\n"
    )
    _plot(results, args.figures / "data_build.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
