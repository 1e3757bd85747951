"""``cellrlhf grpo``: GRPO or RLOO (TRL) with programmatic, learned or mixed rewards.

For each prompt of the data set's ``rl/`` train split the policy samples a group of
``num_generations`` answers. Rewards (``--rewards``):

- ``fidelity``: the group fidelity reward (pseudo-bulk of the group against the real data,
  leave-one-out credit, duplicate / missing-end penalties; :mod:`cellrlhf.reward`);
- ``model``: the learned reward model at ``--reward_model_path``;
- both: a weighted mix (``--reward_weights``, TRL's ``multi_objective_aggregation``).

``--trainer grpo`` (default) uses :class:`trl.GRPOTrainer`, ``--trainer rloo``
:class:`trl.RLOOTrainer`. The held-out monitor (:mod:`cellrlhf.ppo.heldout_monitor`) keeps
the policy with the best *true* held-out fidelity whose diversity held.

Run it as ``accelerate launch grpo.py --config configs/ppo/<name>.yaml`` or ``cellrlhf grpo
--config ...``; flags override the YAML. vLLM is not used (generation by transformers).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import yaml
from trl import ModelConfig, TrlParser

from cellrlhf.ppo.configs import (
    RL_TRAINERS,
    CellGRPOConfig,
    CellGRPOScriptArguments,
    CellRLOOConfig,
)

__all__ = ["make_parser", "build_run", "main", "cli", "trainer_choice"]

logger = logging.getLogger(__name__)


def trainer_choice(argv: Sequence[str]) -> str:
    """``grpo`` or ``rloo``: from ``--trainer`` on the command line, else the YAML, else ``grpo``."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--trainer" and i + 1 < len(argv):
            return _checked(argv[i + 1])
        if arg.startswith("--trainer="):
            return _checked(arg.split("=", 1)[1])
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 < len(argv):
            with open(argv[index + 1]) as handle:
                config = yaml.safe_load(handle) or {}
            if isinstance(config, dict) and "trainer" in config:
                return _checked(str(config["trainer"]))
    return "grpo"


def _checked(name: str) -> str:
    if name not in RL_TRAINERS:
        raise ValueError(f"--trainer {name!r}; choose one of {RL_TRAINERS}.")
    return name


def make_parser(trainer: str = "grpo", prog: str | None = None) -> TrlParser:
    """The ``TrlParser`` for ``trainer`` (``grpo`` or ``rloo``)."""
    config = CellGRPOConfig if _checked(trainer) == "grpo" else CellRLOOConfig
    from cellrlhf.cli_help import CellTrlParser

    return CellTrlParser((CellGRPOScriptArguments, config, ModelConfig), prog=prog)


def main(script_args: CellGRPOScriptArguments, training_args, model_args: ModelConfig) -> dict:
    """Train with GRPO or RLOO, save the kept policy, return a summary."""
    from cellrlhf.ppo.rl_run import finish_run, train_run

    run = build_run(script_args, training_args, model_args)
    train_run(run)
    return finish_run(run)


def build_run(script_args: CellGRPOScriptArguments, training_args, model_args: ModelConfig):
    """Load data and models and build the GRPO / RLOO trainer and its monitor (:class:`RLRun`)."""
    from cellrlhf.cell2text.answer_budget import resolve_answer_budget
    from cellrlhf.ppo.grpo_trainer import CellGRPOTrainer, CellRLOOTrainer
    from cellrlhf.ppo.rl_run import (
        assemble_run,
        build_heldout_monitor,
        cell_constraint_for,
        load_rl_start,
    )
    from cellrlhf.ppo.sample_checks import SampleChecks

    _check_arguments(script_args, training_args)
    start = load_rl_start(
        model_args.model_name_or_path,
        script_args,
        model_args,
        seed=training_args.seed,
        require_distinct_pad=False,
    )
    data, tokenizer = start.data, start.tokenizer
    budget, budget_record = resolve_answer_budget(
        training_args.max_completion_length, data.train, tokenizer, seed=training_args.seed
    )
    training_args.max_completion_length = budget
    reward_funcs, reward_tokenizers = _reward_functions(script_args, start)
    monitor_reference, monitor_reward = _monitor_models(script_args, training_args, start)
    monitor = build_heldout_monitor(
        script_args,
        data=data,
        tokenizer=tokenizer,
        stop_ids=[tokenizer.eos_token_id],
        max_new_tokens=budget,
        temperature=training_args.temperature,
        output_dir=training_args.output_dir,
    )
    cell_constraint = cell_constraint_for(script_args, start, max_answer_tokens=budget)
    checks = SampleChecks(
        data.decoder,
        budget=budget,
        end_ids=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        closes_at_budget=cell_constraint is not None,
    )
    logger.info(
        "%s on %d prompts x %d generations (%d held out in rl/%s), rewards %s%s",
        script_args.trainer.upper(),
        len(data.train),
        training_args.num_generations,
        len(data.heldout),
        data.heldout_split,
        script_args.rewards,
        f" weighted {training_args.reward_weights}" if training_args.reward_weights else "",
    )
    return assemble_run(
        CellGRPOTrainer if script_args.trainer == "grpo" else CellRLOOTrainer,
        script_args.trainer,
        start,
        monitor,
        (script_args, training_args, model_args),
        info={
            "rewards": list(script_args.rewards),
            "reward_weights": training_args.reward_weights,
            "reward_model": script_args.reward_model_path,
            "trained_with": start.trained_with,
            "constrain_cells": bool(script_args.constrain_cells),
            "answer_budget": budget_record,
        },
        reward_funcs=reward_funcs,
        train_dataset=data.train,
        reward_processing_classes=reward_tokenizers,
        monitor_reference_model=monitor_reference,
        monitor_reward_model=monitor_reward,
        cell_constraint=cell_constraint,
        sample_checks=checks,
    )


def _check_arguments(script_args: CellGRPOScriptArguments, training_args) -> None:
    """Refuse arguments of the other trainer, vLLM, and reward weights that do not match."""
    expected = CellGRPOConfig if script_args.trainer == "grpo" else CellRLOOConfig
    if not isinstance(training_args, expected):
        raise TypeError(
            f"trainer={script_args.trainer!r} needs {expected.__name__} arguments; build the parser "
            "with make_parser(trainer)."
        )
    if training_args.use_vllm:
        raise ValueError(
            "vLLM generation is not supported by cellrlhf's RL stage; set use_vllm: false."
        )
    weights = training_args.reward_weights
    if weights is not None and len(weights) != len(script_args.rewards):
        raise ValueError(
            f"reward_weights={weights} has {len(weights)} entries for "
            f"rewards={script_args.rewards}; give one weight per reward."
        )


def _reward_functions(script_args: CellGRPOScriptArguments, start) -> tuple[list, list]:
    """The reward functions of ``--rewards`` and their processing classes."""
    from cellrlhf.ppo.reward_functions import build_reward_functions

    data = start.data
    return build_reward_functions(
        script_args.rewards,
        decoder=data.decoder,
        tokenizer=start.tokenizer,
        reward_model_path=script_args.reward_model_path,
        fidelity_kwargs=script_args.fidelity_reward_kwargs,
        dtype=start.dtype,
        specific_weight=script_args.specific_weight,
        train_rows=data.dataset.rl[script_args.dataset_train_split]  # all, not subsampled
        if script_args.specific_weight
        else None,
    )


def _monitor_models(script_args: CellGRPOScriptArguments, training_args, start) -> tuple:
    """``(reference, reward model)`` the held-out monitor measures KL and learned reward with.

    The trainer has neither when ``beta`` is 0 (no reference) or the reward is programmatic;
    each is ``None`` when the trainer's own serves, or when monitoring is off.
    """
    from cellrlhf.ppo.model_loading import load_scoring_model

    if script_args.heldout_every_steps <= 0:
        return None, None
    reward = None
    if script_args.reward_model_path and "model" not in script_args.rewards:
        reward = load_scoring_model(
            script_args.reward_model_path,
            tokenizer=start.tokenizer,
            dtype=start.dtype,
            what="reward model",
        )
    reference = None
    if training_args.beta == 0.0 and start.peft_config is None:
        reference = start.load_reference()
    return reference, reward


def cli(argv: Sequence[str] | None = None) -> int:
    """``cellrlhf grpo`` / ``grpo.py``: ``--trainer grpo|rloo``, ``--config`` YAML, flags."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    trainer = trainer_choice(argv)
    parser = make_parser(trainer, prog=f"cellrlhf grpo (trainer {trainer})")
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    main(script_args, training_args, model_args)
    return 0
