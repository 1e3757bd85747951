"""Baselines and ceilings on every fold of the benchmark settings, pooled with 95% intervals.

For each data config (default: the three benchmark settings), every fold is built
(``cellrlhf data build --fold I``), scored without a model (``cellrlhf evaluate`` with no
``--model``: baselines and ceilings on the held-out prompts) and the folds are aggregated
(``cellrlhf aggregate``). The table is what any model trained on these folds is read against.

    python benchmarks/bench_heldout_baselines.py --data-dir ../shared/data --run-dir runs/heldout_baselines

Writes ``benchmarks/figures/heldout_baselines.md`` (``--figure``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = (
    "configs/data/norman_unseen_single_folds.yaml",
    "configs/data/norman_unseen_combo_folds.yaml",
    "configs/data/mcfaline_unseen_pair.yaml",
)
METRICS = ("pearson_delta", "pearson_specific", "pearson_specific_top20", "mae")


def _cellrlhf(*args: str, log: Path) -> None:
    with log.open("w") as handle:
        code = subprocess.call(
            [sys.executable, "-m", "cellrlhf", *args], stdout=handle, stderr=subprocess.STDOUT
        )
    if code:
        raise SystemExit(f"cellrlhf {' '.join(args)} failed ({code}); see {log}")


def run_setting(config: str, run_dir: Path, eval_config: str) -> Path:
    import yaml

    folds = int((yaml.safe_load(Path(config).read_text())["split"] or {}).get("folds") or 0)
    if folds < 2:
        raise SystemExit(f"{config} has no split.folds")
    name = Path(config).stem
    evals = []
    for fold in range(folds):
        out = run_dir / name / f"fold{fold}"
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "data" / "manifest.json").is_file():
            _cellrlhf("data", "build", "--config", config, "--fold", str(fold),
                      "--out", str(out / "data"), log=out / "data.log")  # fmt: skip
        if not (out / "eval" / "summary.csv").is_file():
            _cellrlhf("evaluate", "--config", eval_config, "--dataset_dir", str(out / "data"),
                      "--out", str(out / "eval"), "--no-progress", log=out / "eval.log")  # fmt: skip
        evals += ["--eval", f"fold{fold}_seed0={out / 'eval'}"]
        print(f"{name}: fold {fold + 1}/{folds} scored", flush=True)
    agg = run_dir / name / "aggregate"
    _cellrlhf("aggregate", *evals, "--out", str(agg), log=run_dir / name / "aggregate.log")
    return agg


def table(agg: Path) -> str:
    import pandas as pd

    pooled = pd.read_csv(agg / "pooled.csv")
    pooled = pooled[(pooled["kind"] == "all") & pooled["metric"].isin(METRICS)]
    pooled = pooled.assign(
        value=[
            "-" if pd.isna(m) else f"{m:.3f} ({lo:.3f} to {hi:.3f})"
            for m, lo, hi in zip(pooled["mean"], pooled["ci_low"], pooled["ci_high"], strict=True)
        ]
    )
    wide = pooled.pivot_table(index="method", columns="metric", values="value", aggfunc="first")
    wide = wide[[m for m in METRICS if m in wide.columns]].fillna("-")
    n = int(pooled["n_perturbations"].max())
    folds = int(pooled["n_runs"].max())
    return f"{n} held-out perturbations over {folds} folds\n\n" + wide.to_markdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="directory with perturbench_devel.h5ad")
    parser.add_argument("--run-dir", default="runs/heldout_baselines")
    parser.add_argument("--config", action="append", help="data config(s) with split.folds")
    parser.add_argument("--eval-config", default="configs/eval/cpu_demo.yaml")
    parser.add_argument("--figure", default="benchmarks/figures/heldout_baselines.md")
    args = parser.parse_args()
    if args.data_dir:
        os.environ["CELLRLHF_DATA_DIR"] = str(Path(args.data_dir).resolve())
    run_dir = Path(args.run_dir)
    t0, c0 = time.perf_counter(), os.times()
    sections = []
    for config in args.config or SETTINGS:
        agg = run_setting(config, run_dir, args.eval_config)
        sections += [f"### {Path(config).stem}", "", table(agg), ""]
        verdict = (agg / "verdict.md").read_text().split("\n", 2)[-1].strip()
        sections += [verdict.replace("\n## ", "\n#### ").replace("## ", "#### ", 1), ""]
    wall = time.perf_counter() - t0
    c1 = os.times()
    cpu = (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)
    head = [
        "# Held-out baselines and ceilings over folds",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}; machine: {platform.machine()} CPU, "
        f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "- command: `python benchmarks/bench_heldout_baselines.py --data-dir <data> "
        f"--run-dir {args.run_dir}`; wall {wall:.0f} s, CPU {cpu:.0f} s (builds and scoring)",
        "- values: pooled mean over held-out perturbations with its 95% interval over "
        "perturbations (percentile bootstrap; Student's t below 10 perturbations); "
        "`pearson_specific`: change relative to the mean training change of the context "
        "(docs/metrics.md)",
        "",
    ]
    Path(args.figure).write_text("\n".join(head + sections) + "\n")
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
