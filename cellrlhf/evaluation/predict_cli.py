"""``cellrlhf predict``: one model's decoded cells for a dataset's held-out prompts (``.h5ad``).

::

    cellrlhf predict --model_dir runs/demo/ppo --dataset_dir runs/demo/data \\
        --out runs/demo/ppo_predictions.h5ad --cells_per_prompt 64

``--config`` takes the same ``configs/eval/*.yaml`` files as ``cellrlhf evaluate``: predict
samples with their sampling settings (cells per prompt, seed, temperature, ...); the scoring ones
(baselines, ceilings, DE) are accepted so that one file serves both commands, and not used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cellrlhf.evaluation.cli import DatasetOptions

__all__ = ["PredictOptions", "cli", "main", "make_parser"]

logger = logging.getLogger(__name__)


@dataclass
class PredictOptions:
    """The model ``cellrlhf predict`` samples and the file it writes."""

    model_dir: str = field(metadata={"help": "saved model directory"})
    out: str = field(metadata={"help": "output .h5ad file"})
    name: str | None = field(
        default=None, metadata={"help": "model label (default: the directory name)"}
    )

    def __post_init__(self) -> None:
        if Path(self.out).suffix != ".h5ad":
            raise ValueError(f"--out {self.out}: write predictions to an .h5ad file.")


def make_parser(prog: str = "cellrlhf predict"):
    """The :class:`~cellrlhf.cli_help.CellTrlParser` of :class:`PredictOptions`, the dataset and
    the evaluation settings."""
    from cellrlhf.cli_help import CellTrlParser
    from cellrlhf.evaluation.cli import settings_options

    return CellTrlParser(
        (PredictOptions, DatasetOptions, settings_options()),
        prog=prog,
        description="Sample a model's cells for the dataset's held-out RL prompts, decode them "
        "with the dataset's decoder and write an AnnData. --config takes configs/eval/*.yaml "
        "(its scoring settings are not used here).",
    )


def main(options: PredictOptions, dataset: DatasetOptions, settings_opts):
    """Sample, decode and write the predictions; returns the AnnData."""
    from cellrlhf.evaluation.cli import settings_from
    from cellrlhf.evaluation.model_dirs import resolve_model_dirs
    from cellrlhf.evaluation.prediction import predict

    settings = settings_from(settings_opts)
    name = options.name or Path(options.model_dir).name
    model_dir = resolve_model_dirs({name: options.model_dir})[name]
    pred = predict(
        model_dir,
        dataset.dataset_dir,
        data_dir=dataset.data_dir,
        name=name,
        progress=not dataset.no_progress,
        **settings.predict_kwargs(),
    )
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pred.write_h5ad(out)
    logger.info("wrote %s (%d cells)", out, pred.n_obs)
    return pred


def cli(argv: Sequence[str] | None = None) -> int:
    """``cellrlhf predict``; returns the exit status."""
    from cellrlhf.evaluation.cli import run_reporting_errors

    parsed = make_parser().parse_args_and_config(argv)
    return 2 if run_reporting_errors(lambda: main(*parsed)) is None else 0
