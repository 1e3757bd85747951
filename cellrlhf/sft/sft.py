"""Instruction-tune a cell language model on chat-format cell tasks (TRL ``SFTTrainer``).

Single CPU::

    accelerate launch --config_file configs/accelerate/cpu.yaml sft.py --config configs/sft/cpu_demo.yaml

Many GPUs with DeepSpeed ZeRO-3::

    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml \\
        sft.py --config configs/sft/gpu.yaml --output_dir runs/sft

LoRA on a pretrained model (gene tokens added, initialised from the LM's embeddings of the symbols)::

    accelerate launch sft.py --config configs/sft/cpu_demo.yaml --model_config null \\
        --model_name_or_path <checkpoint> --use_peft --lora_target_modules q_proj v_proj

Every flag of TRL's ``sft`` script works; ``cellrlhf sft`` runs the same code.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "make_parser", "cli"]


def main(script_args, training_args, model_args):
    """Run SFT with parsed arguments; returns the saved model directory."""
    from cellrlhf.sft.training_run import run_training

    return run_training("sft", script_args, training_args, model_args)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The ``TrlParser`` of the script (``--config`` YAML, flags override it)."""
    from cellrlhf.cli_help import CellTrlParser
    from cellrlhf.sft.configs import CellModelArguments, CellScriptArguments, CellSFTConfig

    dataclass_types = (CellScriptArguments, CellSFTConfig, CellModelArguments)
    if subparsers is not None:
        return subparsers.add_parser(
            "sft", help="Instruction-tune a cell language model", dataclass_types=dataclass_types
        )
    return CellTrlParser(dataclass_types, prog=prog)


def cli(argv: list[str]) -> int:
    """``cellrlhf sft [--config YAML] [flags]``."""
    from cellrlhf.sft.cli_runner import run_cli

    return run_cli("sft", make_parser, main, argv)


if __name__ == "__main__":  # through run_guarded, as `cellrlhf sft` runs
    from cellrlhf.cli_errors import stage_script_main

    sys.exit(stage_script_main("sft"))
