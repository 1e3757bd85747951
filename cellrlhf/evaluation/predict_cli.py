"""``cellrlhf predict``: one model's decoded cells for a dataset's held-out prompts (``.h5ad``).

::

    cellrlhf predict --model_dir runs/demo/ppo --dataset_dir runs/demo/data \\
        --out runs/demo/ppo_predictions.h5ad --cells_per_prompt 64
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

__all__ = ["make_parser", "cli"]

logger = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    from cellrlhf.evaluation.cli import add_common_arguments

    parser = argparse.ArgumentParser(
        prog="cellrlhf predict",
        description="Sample a model's cells for the dataset's held-out RL prompts, decode them "
        "with the dataset's decoder and write an AnnData.",
    )
    parser.add_argument("--model_dir", "--model-dir", required=True, help="saved model directory")
    add_common_arguments(parser)
    parser.add_argument("--out", required=True, help="output .h5ad file")
    parser.add_argument("--name", help="model label (default: the directory name)")
    return parser


def cli(argv: Sequence[str] | None = None) -> int:
    from cellrlhf.evaluation.cli import run_reporting_errors, settings_from_args
    from cellrlhf.evaluation.model_dirs import resolve_model_dirs
    from cellrlhf.evaluation.prediction import predict

    args = make_parser().parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".h5ad":
        logger.error("--out %s: write predictions to an .h5ad file", out)
        return 2

    def run():
        settings = settings_from_args(args)
        name = args.name or Path(args.model_dir).name
        model_dir = resolve_model_dirs({name: args.model_dir})[name]
        return predict(
            model_dir,
            args.dataset_dir,
            data_dir=args.data_dir,
            name=name,
            progress=not args.no_progress,
            **settings.predict_kwargs(),
        )

    pred = run_reporting_errors(run)
    if pred is None:
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    pred.write_h5ad(out)
    logger.info("wrote %s (%d cells)", out, pred.n_obs)
    return 0
