"""Pretrain a cell language model on cell sentences: packed causal-LM training.

Sentences are packed into blocks of ``--max_length`` tokens (TRL ``SFTTrainer`` packing, ``bfd``
strategy: sentences never attend to each other). The tokenizer is built from the dataset
directory: one token per gene (perturbation targets included) and the prompt words of the SFT
data, so the pretrained model continues straight into ``sft``.

Single CPU::

    accelerate launch --config_file configs/accelerate/cpu.yaml \\
        pretrain.py --config configs/pretrain/cpu_demo.yaml

Many GPUs::

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml \\
        pretrain.py --config configs/pretrain/gpu.yaml

``cellrlhf pretrain`` runs the same code.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "make_parser", "cli"]


def main(script_args, training_args, model_args):
    """Run pretraining with parsed arguments; returns the saved model directory."""
    from cellrlhf.sft.training_run import run_training

    return run_training("pretrain", script_args, training_args, model_args)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The ``TrlParser`` of the script (``--config`` YAML, flags override it)."""
    from cellrlhf.cli_help import CellTrlParser
    from cellrlhf.sft.configs import CellModelArguments, CellPretrainConfig, CellScriptArguments

    dataclass_types = (CellScriptArguments, CellPretrainConfig, CellModelArguments)
    if subparsers is not None:
        return subparsers.add_parser(
            "pretrain", help="Pretrain a cell language model", dataclass_types=dataclass_types
        )
    return CellTrlParser(dataclass_types, prog=prog)


def cli(argv: list[str]) -> int:
    """``cellrlhf pretrain [--config YAML] [flags]``."""
    from cellrlhf.sft.cli_runner import run_cli

    return run_cli("pretrain", make_parser, main, argv)


if __name__ == "__main__":  # through run_guarded, as `cellrlhf pretrain` runs
    from cellrlhf.cli_errors import stage_script_main

    sys.exit(stage_script_main("pretrain"))
