"""The command-line flags that load a :class:`~cellrlhf.chat.cell_lm.CellLM`, shared by
``cellrlhf chat`` and ``cellrlhf serve``."""

from __future__ import annotations

import argparse

__all__ = ["add_model_arguments", "load_model_from_args"]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--revision``, ``--device-map``, ``--dtype``, ``--constrain-cells`` and
    ``--trust-remote-code`` to ``parser``."""
    parser.add_argument("--model", required=True, help="model directory or Hugging Face Hub id")
    parser.add_argument("--revision", default=None, help="Hub revision of --model")
    parser.add_argument("--device-map", default=None, help="e.g. auto (GPUs via accelerate)")
    parser.add_argument("--dtype", default=None, help="weight dtype, e.g. bfloat16 or auto")
    parser.add_argument(
        "--constrain-cells",
        action="store_true",
        help="constrained decoding of generated cells: only the model's genes, each at most "
        "once per cell (needs gene tokens; default: off, the model's own answers)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run code shipped with the model (only for models you trust)",
    )


def load_model_from_args(args: argparse.Namespace):
    """The :class:`~cellrlhf.chat.cell_lm.CellLM` named by :func:`add_model_arguments`' flags."""
    from cellrlhf.chat.cell_lm import CellLM

    return CellLM.from_pretrained(
        args.model,
        revision=args.revision,
        device_map=args.device_map,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        constrain_cells=args.constrain_cells,
    )
