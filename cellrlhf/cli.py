"""The ``cellrlhf`` command line: one subcommand per pipeline stage.

Each subcommand is a thin door into a stage's own ``cli(argv)`` function, which is the same code
that the root scripts (``sft.py``, ``ppo.py``, ...) run under ``accelerate launch``. Stages are
imported only when their subcommand runs, so ``cellrlhf --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

# name -> (module with a ``cli(argv) -> int`` function, or ``module:function``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "encode": ("cellrlhf.cell2text.cli", "turn an .h5ad into cell sentences (Parquet shards)"),
    "data": ("cellrlhf.data.cli", "build training datasets from AnnData (`data build --config`)"),
    "pretrain": ("cellrlhf.sft.pretrain", "pretrain a cell language model on cell sentences"),
    "sft": ("cellrlhf.sft.sft", "instruction-tune a model on chat-format cell tasks"),
    "preferences": ("cellrlhf.reward.preferences_cli", "sample and score preference pairs"),
    "reward": ("cellrlhf.reward.train", "train a reward model on preference pairs"),
    "ppo": ("cellrlhf.ppo.ppo", "RLHF with TRL's PPO on perturbation fidelity"),
    "grpo": ("cellrlhf.ppo.grpo", "GRPO / RLOO with programmatic or learned rewards"),
    "predict": ("cellrlhf.evaluation.predict_cli", "sample a model's cells for held-out prompts"),
    "evaluate": (
        "cellrlhf.evaluation.command",
        "models (or prediction files: --real) vs baselines and ceilings on held-out data",
    ),
    "eval": ("cellrlhf.evaluation.command:eval_alias", "deprecated: `evaluate --real ...`"),
    "aggregate": ("cellrlhf.evaluation.aggregate_cli", "pool evaluations: intervals and verdict"),
    "chat": ("cellrlhf.chat.repl", "chat with a model about your cells in the terminal"),
    "serve": ("cellrlhf.chat.web", "serve a chat web app (gradio) on 127.0.0.1"),
    "push": ("cellrlhf.hub.push", "share a model or dataset on the Hugging Face Hub"),
    "demo": ("cellrlhf.pipeline.demo", "run the whole pipeline end to end on CPU"),
    "pipeline": ("cellrlhf.pipeline.run", "run a pipeline YAML (all stages, one file)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: cellrlhf <command> [options]   (cellrlhf <command> --help for details)", ""]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Entry point of the ``cellrlhf`` command.

    Errors a person can act on print one line (``cellrlhf <command>: error: ...``) and return 2;
    ``--debug`` (anywhere on the command line) or ``CELLRLHF_DEBUG=1`` shows the traceback.
    ``prog`` names the program in messages (a stage script passes its own name).
    """
    from cellrlhf.cli_errors import DEBUG_FLAG, run_guarded

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [a for a in argv if a != DEBUG_FLAG]
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        from cellrlhf import __version__

        print(f"cellrlhf {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"cellrlhf: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from cellrlhf.cell2text.thread_budget import align_numba_threads
    from cellrlhf.third_party_noise import quiet_known_noise

    quiet_known_noise()
    align_numba_threads()
    module_name, _, function = COMMANDS[name][0].partition(":")

    def run(args: list[str]) -> int:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("cellrlhf"):
                print(
                    f"cellrlhf: the {name!r} command is not available in this version.",
                    file=sys.stderr,
                )
                return 2
            raise
        return int(getattr(module, function or "cli")(args) or 0)

    return run_guarded(prog or f"cellrlhf {name}", run, [*rest, *([DEBUG_FLAG] if debug else [])])
