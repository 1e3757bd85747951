"""``cellrlhf evaluate``: models vs baselines and ceilings on a dataset's held-out perturbations.

::

    cellrlhf evaluate --dataset_dir runs/demo/data --model sft=runs/demo/sft \\
        --model ppo=runs/demo/ppo --out runs/demo/eval --config configs/eval/cpu_demo.yaml
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = [
    "make_parser",
    "add_common_arguments",
    "settings_from_args",
    "run_reporting_errors",
    "cli",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``cellrlhf predict`` and ``cellrlhf evaluate``."""
    parser.add_argument("--dataset_dir", "--dataset-dir", required=True, help="built dataset dir")
    parser.add_argument(
        "--config", help="eval settings YAML (configs/eval/{tiny,cpu_demo,gpu}.yaml)"
    )
    parser.add_argument("--cells_per_prompt", "--cells-per-prompt", type=int, help="default 64")
    parser.add_argument("--max_prompts", "--max-prompts", type=int, help="default: all")
    parser.add_argument("--seed", type=int, help="sampling / subsample seed (default 0)")
    parser.add_argument("--batch_size", "--batch-size", type=int, help="answers per generate call")
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, help="answer budget")
    parser.add_argument(
        "--data_dir",
        "--data-dir",
        help="directory with the dataset's source file (else $CELLRLHF_DATA_DIR / cache)",
    )
    parser.add_argument(
        "--constrain-cells",
        "--constrain_cells",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sample under the single-cell answer grammar (one valid cell, then the end); "
        "default: as each model was trained (constrain_cells in its cellrlhf.json)",
    )
    parser.add_argument(
        "--reference",
        choices=("auto", "model", "real"),
        help="what a model's change is taken against: its own answers to each prompt's control "
        "twin (model), the real control cells through the decoder (real, the default); auto: "
        "model when the dataset taught control answers",
    )
    parser.add_argument("--no_progress", "--no-progress", action="store_true")


def settings_from_args(args):
    """Settings of ``--config`` with the command-line values on top."""
    from cellrlhf.evaluation.settings import load_eval_settings

    return load_eval_settings(args.config).with_overrides(
        cells_per_prompt=args.cells_per_prompt,
        max_prompts=args.max_prompts,
        seed=args.seed,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        constrain_cells=args.constrain_cells,
        reference=args.reference,
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellrlhf evaluate",
        description="Sample every model's cells for the held-out RL prompts and score them next "
        "to baselines and ceilings, per cell context.",
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a model to evaluate (repeat: --model sft=DIR --model ppo=DIR); an RL run's last "
        "policy (DIR/last, when it is not the kept one) is evaluated too, as NAME_last; with "
        "no --model only the baselines and ceilings are scored",
    )
    parser.add_argument(
        "--no-last-policies",
        "--no_last_policies",
        action="store_true",
        help="evaluate only the named directories, not their last policies (DIR/last)",
    )
    parser.add_argument("--out", "--output_dir", required=True, help="output directory")
    parser.add_argument(
        "--skip-missing",
        "--skip_missing",
        action="store_true",
        help="leave out model dirs that do not exist (a skipped stage) with a warning",
    )
    return parser


def run_reporting_errors(run: Callable[[], T]) -> T | None:
    """``run()``, with bad input (missing models or data, wrong files) logged, not raised.

    Returns ``None`` after logging such an error; other exceptions propagate.
    """
    from cellrlhf.evaluation.real_data import SourceChecksumError

    try:
        return run()
    except (FileNotFoundError, SourceChecksumError, ValueError) as err:
        # missing model dirs and source files are FileNotFoundErrors; bad values ValueErrors
        logger.debug("details", exc_info=True)
        logger.error("%s", err)
    return None


def cli(argv: Sequence[str] | None = None) -> int:
    from cellrlhf.evaluation.evaluate import evaluate_models
    from cellrlhf.evaluation.model_dirs import parse_model_args, with_last_policies

    parser = make_parser()
    args = parser.parse_args(argv)

    def run():
        models = parse_model_args(args.model)
        if not args.no_last_policies:
            models = with_last_policies(models)
        return evaluate_models(
            args.dataset_dir,
            models,
            args.out,
            settings=settings_from_args(args),
            data_dir=args.data_dir,
            skip_missing=args.skip_missing,
            progress=not args.no_progress,
        )

    result = run_reporting_errors(run)
    if result is None:
        return 2
    logger.info("metrics table: %s", result.paths["markdown"])
    return 0
