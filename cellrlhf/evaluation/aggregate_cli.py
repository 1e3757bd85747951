"""``cellrlhf aggregate``: pool evaluations over folds and seeds, with intervals and a verdict.

::

    cellrlhf aggregate --eval fold0_seed0=runs/x/f0_s0/eval --eval fold1_seed0=runs/x/f1_s0/eval \\
        --out runs/x/aggregate --metric pearson_specific --n-boot 2000 --seed 0

One ``--eval`` works too (the intervals then resample that run's perturbations).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

__all__ = ["cli", "make_parser"]

logger = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellrlhf aggregate",
        description="Per-fold tables, pooled means with bootstrap intervals over perturbations, "
        "paired differences (RL minus SFT, models minus the best baseline) and the verdict, from "
        "one or more `cellrlhf evaluate` output directories.",
    )
    parser.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="an evaluation directory (repeat); a label like fold0_seed1 gives fold and seed "
        "where the manifests do not record them",
    )
    parser.add_argument("--out", "--output_dir", required=True, help="output directory")
    parser.add_argument(
        "--metric",
        action="append",
        default=None,
        help="metric to aggregate (repeat); the first leads the verdict (default: "
        "pearson_specific if present, else pearson_delta, and the other key metrics)",
    )
    parser.add_argument(
        "--n-boot", "--n_boot", type=int, default=2000, help="bootstrap resamples (default 2000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--confidence-level", "--confidence_level", type=float, default=0.95, help="default 0.95"
    )
    return parser


def cli(argv: Sequence[str] | None = None) -> int:
    from cellrlhf.evaluation.aggregate import aggregate_evaluations
    from cellrlhf.evaluation.aggregate_files import write_aggregate
    from cellrlhf.evaluation.aggregate_inputs import parse_eval_args
    from cellrlhf.evaluation.cli import run_reporting_errors
    from cellrlhf.evaluation.verdict import setting_verdicts

    parser = make_parser()
    args = parser.parse_args(argv)
    if not args.eval:
        parser.error("name at least one evaluation: --eval LABEL=DIR")
    if args.n_boot < 1:
        parser.error(f"--n-boot must be positive, got {args.n_boot}")
    if not 0 < args.confidence_level < 1:
        parser.error(f"--confidence-level must be in (0, 1), got {args.confidence_level}")

    def run():
        agg = aggregate_evaluations(
            parse_eval_args(args.eval),
            metrics=args.metric,
            n_boot=args.n_boot,
            seed=args.seed,
            confidence_level=args.confidence_level,
        )
        return agg, write_aggregate(agg, args.out)

    result = run_reporting_errors(run)
    if result is None:
        return 2
    agg, paths = result
    for verdict in setting_verdicts(agg):
        for line in verdict.sentences:
            logger.info("[%s] %s", verdict.setting, line)
    logger.info("aggregate written to %s (verdict: %s)", args.out, paths["verdict_md"])
    return 0
