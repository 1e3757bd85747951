"""``cellrlhf ppo``: RLHF with TRL's PPO on perturbation fidelity.

The SFT policy answers perturbation prompts (the data set's ``rl/`` train split) with cell
sentences; the learned reward model scores each answer; TRL's ``PPOTrainer`` (from
``trl.experimental.ppo``, TRL 1.12) updates the policy against a frozen reference (KL penalty)
with a value model initialised from the reward model. The held-out monitor
(:mod:`cellrlhf.ppo.heldout_monitor`) measures the *true* fidelity on perturbations neither
model saw and keeps the best policy by that, never by the reward model's score.

Run it as ``accelerate launch ppo.py --config configs/ppo/<name>.yaml`` (any accelerate or
DeepSpeed config) or ``cellrlhf ppo --config ...``; every TRL / transformers flag overrides the
YAML on the command line. ``--use_peft`` trains LoRA adapters (the reference is then the
policy with adapters disabled; the saved model has them merged).

Like every training stage, PPO saves a checkpoint every ``save_steps`` updates and a re-run
resumes from the latest complete one in ``output_dir`` (``--overwrite_output_dir`` or
``--resume_from_checkpoint none`` starts over): weights, optimizer, scheduler, counters, RNG
states, prompt order and held-out monitor continue exactly (:mod:`cellrlhf.ppo.ppo_resume`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from trl import ModelConfig, TrlParser

from cellrlhf.ppo.configs import CellPPOConfig, CellRLScriptArguments

__all__ = ["make_parser", "build_run", "main", "cli"]

logger = logging.getLogger(__name__)


def make_parser(prog: str | None = None) -> TrlParser:
    """The ``TrlParser`` of ``ppo``: ``--config <yaml>`` plus every flag of its dataclasses."""
    from cellrlhf.cli_help import CellTrlParser

    return CellTrlParser((CellRLScriptArguments, CellPPOConfig, ModelConfig), prog=prog)


def main(
    script_args: CellRLScriptArguments, training_args: CellPPOConfig, model_args: ModelConfig
) -> dict:
    """Train with PPO, save the kept policy, return a summary (kept step, held-out figures, timing)."""
    from cellrlhf.ppo.rl_run import finish_run, train_run

    run = build_run(script_args, training_args, model_args)
    train_run(run)
    return finish_run(run)


def build_run(
    script_args: CellRLScriptArguments, training_args: CellPPOConfig, model_args: ModelConfig
):
    """Load data and models and build the PPO trainer and its monitor (:class:`RLRun`)."""
    from transformers import set_seed

    from cellrlhf.cell2text.answer_budget import resolve_answer_budget
    from cellrlhf.ppo.model_loading import load_scoring_model
    from cellrlhf.ppo.ppo_trainer import CellPPOTrainer
    from cellrlhf.ppo.prompt_tokenization import tokenize_prompts
    from cellrlhf.ppo.rl_run import (
        assemble_run,
        build_heldout_monitor,
        cell_constraint_for,
        load_rl_start,
    )

    sft_path = _check_arguments(model_args, training_args)
    _warn_reward_sampling(training_args.reward_model_path, bool(script_args.constrain_cells))
    # TRL's PPO seeds torch only; its minibatches are numpy permutations: seed every RNG, as
    # transformers' Trainer does, so a run is reproducible (and a resumed one comparable)
    set_seed(training_args.seed)
    start = load_rl_start(sft_path, script_args, model_args, seed=training_args.seed)
    data, tokenizer = start.data, start.tokenizer
    training_args.response_length, budget_record = resolve_answer_budget(
        training_args.response_length,
        data.train,
        tokenizer,
        flag="response_length",
        seed=training_args.seed,
    )
    reward_model = load_scoring_model(
        training_args.reward_model_path, tokenizer=tokenizer, dtype=start.dtype, what="reward model"
    )
    value_model = load_scoring_model(
        training_args.value_model_path or training_args.reward_model_path,
        tokenizer=tokenizer,
        dtype=start.dtype,
        what="value model",
    )
    # ZeRO-3 cannot deep-copy a partitioned policy (TRL's default): load the reference itself
    reference = None if start.peft_config is not None else start.load_reference()

    train = tokenize_prompts(data.train, tokenizer, max_prompt_length=script_args.max_prompt_length)
    _check_enough_prompts(len(train), training_args)
    heldout = tokenize_prompts(data.heldout, tokenizer)
    stop_id = _stop_id(script_args, training_args, tokenizer)
    monitor = build_heldout_monitor(
        script_args,
        data=data,
        tokenizer=tokenizer,
        stop_ids=[stop_id],
        max_new_tokens=training_args.response_length,
        temperature=training_args.temperature,
        output_dir=training_args.output_dir,
    )
    logger.info(
        "PPO on %d prompts (%d held out in rl/%s), policy %s, reward model %s%s",
        len(train),
        len(data.heldout),
        data.heldout_split,
        start.sft_dir,
        training_args.reward_model_path,
        " (LoRA)" if start.peft_config is not None else "",
    )
    return assemble_run(
        CellPPOTrainer,
        "ppo",
        start,
        monitor,
        (script_args, training_args, model_args),
        info={
            "reward_model": str(training_args.reward_model_path),
            "trained_with": start.trained_with,
            "constrain_cells": bool(script_args.constrain_cells),
            "answer_budget": budget_record,
        },
        ref_model=reference,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train,
        eval_dataset=heldout,
        cell_constraint=cell_constraint_for(
            script_args, start, max_answer_tokens=training_args.response_length
        ),
    )


def _check_arguments(model_args: ModelConfig, training_args: CellPPOConfig) -> str | None:
    """The SFT policy's path (``--model_name_or_path`` or ``--sft_model_path``), after checking it,
    the reward model's and the end token."""
    from cellrlhf.ppo.model_loading import check_model_dir

    a, b = model_args.model_name_or_path, training_args.sft_model_path
    if a and b and Path(a).expanduser().resolve() != Path(b).expanduser().resolve():
        raise ValueError(
            f"--model_name_or_path ({a}) and --sft_model_path ({b}) name different policies; set one."
        )
    sft_path = a or b
    check_model_dir(sft_path, what="SFT policy", flag="--model_name_or_path")
    check_model_dir(
        training_args.reward_model_path, what="reward model", flag="--reward_model_path"
    )
    if training_args.stop_token != "eos" and training_args.stop_token_id is None:
        raise ValueError(
            "PPO needs an end token: keep stop_token: eos (or set stop_token_id); without one every "
            "answer runs to response_length and the missing-end penalty cannot apply."
        )
    return sft_path


def _warn_reward_sampling(reward_model_path, constrain_cells: bool) -> bool:
    """Warn when the reward model learned on answers sampled otherwise than the policy samples
    (with or without the cell grammar): it then scores answers unlike those it was trained on.
    Returns whether it warned; reward models without the record (older ones) are not judged."""
    from cellrlhf.sft.model_dir import load_model_info

    learned = (load_model_info(reward_model_path).get("preferences") or {}).get("constrain_cells")
    if learned is None or bool(learned) == constrain_cells:
        return False
    how = {True: "under the cell grammar", False: "freely"}
    logger.warning(
        "the reward model at %s learned on preferences sampled %s, but this PPO policy samples %s: "
        "it will score answers unlike those it was trained on. Rebuild the preferences with "
        "`cellrlhf preferences --constrain_cells %s` and retrain the reward model.",
        reward_model_path,
        how[bool(learned)],
        how[constrain_cells],
        str(constrain_cells).lower(),
    )
    return True


def _stop_id(script_args: CellRLScriptArguments, training_args: CellPPOConfig, tokenizer) -> int:
    """The token id that ends an answer; ``constrain_cells`` needs it to be the eos token."""
    stop_id = (
        training_args.stop_token_id if training_args.stop_token != "eos" else tokenizer.eos_token_id
    )
    if script_args.constrain_cells and stop_id != tokenizer.eos_token_id:
        raise ValueError(
            "constrain_cells ends each answer with the eos token; PPO's stop_token_id "
            f"{stop_id} is another token. Keep stop_token: eos."
        )
    return stop_id


def _check_enough_prompts(n_prompts: int, training_args: CellPPOConfig) -> None:
    """PPO draws fixed-size batches per process with drop_last: too few prompts would leave a
    process without a batch, and the processes would wait on each other forever."""
    from accelerate import PartialState

    processes = PartialState().num_processes
    needed = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    if n_prompts < needed * processes:
        raise ValueError(
            f"{n_prompts} training prompts cannot fill one PPO batch of "
            f"per_device_train_batch_size x gradient_accumulation_steps = {needed} prompts on each "
            f"of {processes} process(es); lower them or use more prompts."
        )


def cli(argv: Sequence[str] | None = None) -> int:
    """``cellrlhf ppo`` / ``ppo.py``: parse ``--config`` YAML plus flags, then train."""
    # TRL's PPO gathers its metrics with gather_for_metrics on a length-less loader, which makes
    # accelerate log one INFO line per metric per step
    logging.getLogger("accelerate.accelerator").setLevel(logging.WARNING)
    parser = make_parser(prog="cellrlhf ppo")
    script_args, training_args, model_args = parser.parse_args_and_config(
        args=None if argv is None else list(argv)
    )
    main(script_args, training_args, model_args)
    return 0
