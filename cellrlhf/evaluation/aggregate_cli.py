"""``cellrlhf aggregate``: pool evaluations over folds and seeds, with intervals and a verdict.

::

    cellrlhf aggregate --eval fold0_seed0=runs/x/f0_s0/eval --eval fold1_seed0=runs/x/f1_s0/eval \\
        --out runs/x/aggregate --metric pearson_specific --n-boot 2000 --seed 0

One ``--eval`` works too (the intervals then resample that run's perturbations).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from cellrlhf.cli_help import RepeatableOption

__all__ = ["AggregateOptions", "cli", "main", "make_parser"]

logger = logging.getLogger(__name__)


@dataclass
class AggregateOptions:
    """Options of ``cellrlhf aggregate`` (flags, or keys of a ``--config`` YAML)."""

    eval: list[str] = field(
        metadata={
            "action": RepeatableOption,
            "metavar": "LABEL=DIR",
            "help": "an evaluation directory (repeat); a label like fold0_seed1 gives fold and "
            "seed where the manifests do not record them",
        }
    )
    out: str = field(
        metadata={"help": "output directory", "aliases": ["--output_dir", "--output-dir"]}
    )
    metric: list[str] | None = field(
        default=None,
        metadata={
            "action": RepeatableOption,
            "help": "metric to aggregate (repeat); the first leads the verdict (default: "
            "pearson_specific if present, else pearson_delta, and the other key metrics)",
        },
    )
    n_boot: int = field(default=2000, metadata={"help": "bootstrap resamples"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})
    confidence_level: float = field(default=0.95, metadata={"help": "interval coverage"})

    def __post_init__(self) -> None:
        if not self.eval:
            raise ValueError("name at least one evaluation: --eval LABEL=DIR.")
        if self.n_boot < 1:
            raise ValueError(f"--n_boot must be positive, got {self.n_boot}.")
        if not 0 < self.confidence_level < 1:
            raise ValueError(f"--confidence_level must be in (0, 1), got {self.confidence_level}.")


def make_parser(prog: str = "cellrlhf aggregate"):
    """The :class:`~cellrlhf.cli_help.CellTrlParser` of :class:`AggregateOptions`."""
    from cellrlhf.cli_help import CellTrlParser

    return CellTrlParser(
        (AggregateOptions,),
        prog=prog,
        description="Per-fold tables, pooled means with bootstrap intervals over perturbations, "
        "paired differences (RL minus SFT, models minus the best baseline) and the verdict, "
        "from one or more `cellrlhf evaluate` output directories.",
    )


def main(options: AggregateOptions):
    """Aggregate, write and log the verdicts; returns the aggregate and its file paths."""
    from cellrlhf.evaluation.aggregate import aggregate_evaluations
    from cellrlhf.evaluation.aggregate_files import write_aggregate
    from cellrlhf.evaluation.aggregate_inputs import parse_eval_args
    from cellrlhf.evaluation.verdict import setting_verdicts

    agg = aggregate_evaluations(
        parse_eval_args(options.eval),
        metrics=options.metric,
        n_boot=options.n_boot,
        seed=options.seed,
        confidence_level=options.confidence_level,
    )
    paths = write_aggregate(agg, options.out)
    for verdict in setting_verdicts(agg):
        for line in verdict.sentences:
            logger.info("[%s] %s", verdict.setting, line)
    logger.info("aggregate written to %s (verdict: %s)", options.out, paths["verdict_md"])
    return agg, paths


def cli(argv: Sequence[str] | None = None) -> int:
    """``cellrlhf aggregate``; returns the exit status."""
    from cellrlhf.evaluation.cli import run_reporting_errors

    (options,) = make_parser().parse_args_and_config(argv)
    return 2 if run_reporting_errors(lambda: main(options)) is None else 0
