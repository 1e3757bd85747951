"""``cellrlhf evaluate``: models vs baselines and ceilings on a dataset's held-out perturbations.

::

    cellrlhf evaluate --config configs/eval/cpu_demo.yaml --dataset_dir runs/demo/data \\
        --model sft=runs/demo/sft --model ppo=runs/demo/ppo --out runs/demo/eval

Options come from three dataclasses parsed by :class:`~cellrlhf.cli_help.CellTrlParser`:
:class:`EvaluateOptions` (what to evaluate, where to write), :class:`DatasetOptions` (shared with
``cellrlhf predict``) and :func:`settings_options` (every
:class:`~cellrlhf.evaluation.settings.EvalSettings` field). ``--config`` takes a
``configs/eval/*.yaml`` file; any option may be a key there, and flags override it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from cellrlhf.cli_help import NegatableFlag, RepeatableOption

if TYPE_CHECKING:
    from cellrlhf.evaluation.settings import EvalSettings

__all__ = [
    "DatasetOptions",
    "EvaluateOptions",
    "cli",
    "main",
    "make_parser",
    "run_reporting_errors",
    "settings_from",
    "settings_options",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class DatasetOptions:
    """The dataset whose held-out prompts are sampled (``cellrlhf evaluate`` and ``predict``)."""

    dataset_dir: str = field(metadata={"help": "built dataset directory (`cellrlhf data build`)"})
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "directory with the dataset's source file (else $CELLRLHF_DATA_DIR / cache)"
        },
    )
    no_progress: bool = field(default=False, metadata={"help": "no progress bars"})


@dataclass
class EvaluateOptions:
    """What ``cellrlhf evaluate`` evaluates and where it writes."""

    out: str = field(
        metadata={"help": "output directory", "aliases": ["--output_dir", "--output-dir"]}
    )
    model: list[str] = field(
        default_factory=list,
        metadata={
            "action": RepeatableOption,
            "metavar": "NAME=DIR",
            "help": "a model to evaluate (repeat: --model sft=DIR --model ppo=DIR); an RL run's "
            "last policy (DIR/last, when it is not the kept one) is evaluated too, as NAME_last; "
            "with no --model only the baselines and ceilings are scored",
        },
    )
    no_last_policies: bool = field(
        default=False,
        metadata={"help": "evaluate only the named directories, not their last policies"},
    )
    no_grammar_rows: bool = field(
        default=False,
        metadata={
            "help": "next to a constrained RL policy, do not also sample each unconstrained model "
            "(e.g. SFT) under the cell grammar as NAME_grammar (the like-with-like row RL is "
            "compared with)"
        },
    )
    skip_missing: bool = field(
        default=False,
        metadata={
            "help": "leave out model dirs that do not exist (a skipped stage), with a warning"
        },
    )


@functools.cache
def settings_options():
    """The parser dataclass of every :class:`~cellrlhf.evaluation.settings.EvalSettings` field
    (same names and defaults; the keys of ``configs/eval/*.yaml``)."""
    from cellrlhf.cli_help import options_dataclass
    from cellrlhf.evaluation.settings import EvalSettings

    return options_dataclass(
        EvalSettings,
        name="EvalSettingsOptions",
        metadata={"constrain_cells": {"action": NegatableFlag}},
    )


def settings_from(options) -> EvalSettings:
    """The :class:`~cellrlhf.evaluation.settings.EvalSettings` of parsed settings options."""
    from cellrlhf.evaluation.settings import EvalSettings

    return EvalSettings.from_dict(dataclasses.asdict(options), where="evaluation settings")


def make_parser(prog: str = "cellrlhf evaluate"):
    """The :class:`~cellrlhf.cli_help.CellTrlParser` of :class:`EvaluateOptions`,
    :class:`DatasetOptions` and the settings."""
    from cellrlhf.cli_help import CellTrlParser

    return CellTrlParser(
        (DatasetOptions, EvaluateOptions, settings_options()),
        prog=prog,
        description="Sample every model's cells for the held-out RL prompts and score them next "
        "to baselines and ceilings, per cell context. --config takes configs/eval/*.yaml.",
    )


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


def main(dataset: DatasetOptions, options: EvaluateOptions, settings_opts):
    """Evaluate the models of ``options`` on ``dataset``; returns the evaluation result."""
    from cellrlhf.evaluation.evaluate import evaluate_models
    from cellrlhf.evaluation.model_dirs import (
        parse_model_args,
        with_grammar_rows,
        with_last_policies,
    )

    settings = settings_from(settings_opts)
    models = parse_model_args(options.model)
    if not options.no_last_policies:
        models = with_last_policies(models)
    if not options.no_grammar_rows and settings.constrain_cells is None:
        models = with_grammar_rows(models)
    return evaluate_models(
        dataset.dataset_dir,
        models,
        options.out,
        settings=settings,
        data_dir=dataset.data_dir,
        skip_missing=options.skip_missing,
        progress=not dataset.no_progress,
    )


def cli(argv: Sequence[str] | None = None) -> int:
    """``cellrlhf evaluate`` (the models form); returns the exit status."""
    parsed = make_parser().parse_args_and_config(argv)
    result = run_reporting_errors(lambda: main(*parsed))
    if result is None:
        return 2
    logger.info("metrics table: %s", result.paths["markdown"])
    return 0
