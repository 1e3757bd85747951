"""Steps shared by the PPO and GRPO / RLOO entry points: data, policy, monitor, trainer, save.

Reads only saved outputs of earlier stages: the data set directory (``rl/`` prompts with
real reference profiles, ``expression_decoder.json``) and model directories.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellrlhf.data.layout import DatasetDir, DatasetDirError, open_dataset_dir
from cellrlhf.ppo.configs import CellRLScriptArguments

__all__ = [
    "RLData",
    "RLRun",
    "RLStart",
    "open_rl_data",
    "load_rl_start",
    "cell_constraint_for",
    "assemble_run",
    "build_heldout_monitor",
    "stage_info",
    "finish_run",
    "resume_checkpoint",
    "train_run",
]

logger = logging.getLogger(__name__)

TIMING_FILENAME = "phase_timing.json"


@dataclass
class RLData:
    """The ``rl/`` splits of a data set directory and its expression decoder.

    ``heldout`` is the split the monitor evaluates and selects on (``heldout_split``).
    """

    dataset: DatasetDir
    train: object
    heldout: object
    decoder: object
    heldout_split: str = "test"


@dataclass
class RLRun:
    """A prepared RL run: train with :func:`train_run`, then :func:`finish_run`.

    Attributes
    ----------
    trainer
        The cellrlhf trainer (PPO, GRPO or RLOO).
    monitor
        The held-out monitor (``None`` when off).
    script_args
        The run's script arguments.
    run_config
        All arguments, for ``training_config.yaml``.
    sft_dir
        The SFT model the run started from.
    data
        The ``rl/`` data.
    info
        ``cellrlhf.json`` content of the output model.
    """

    trainer: object
    monitor: object
    script_args: CellRLScriptArguments
    run_config: dict
    sft_dir: Path
    data: RLData
    info: dict


@dataclass
class RLStart:
    """What every RL entry point loads first: the SFT policy (``sft_dir``, its ``cellrlhf.json``,
    model and RL-checked tokenizer), the ``rl/`` data, TRL's LoRA config (``None``: all weights
    train) and the models' dtype."""

    sft_dir: Path
    sft_info: dict
    policy: object
    tokenizer: object
    data: RLData
    peft_config: object
    dtype: str | None

    @property
    def trained_with(self) -> str:
        """``lora`` or ``full`` (``cellrlhf.json``)."""
        return "lora" if self.peft_config is not None else "full"

    def load_reference(self):
        """A second, frozen copy of the SFT policy."""
        from cellrlhf.ppo.model_loading import load_policy

        return load_policy(self.sft_dir, dtype=self.dtype)[0]


def load_rl_start(
    sft_path: str | Path | None,
    script_args: CellRLScriptArguments,
    model_args,
    *,
    seed: int,
    require_distinct_pad: bool = True,
) -> RLStart:
    """Check the SFT directory, open the ``rl/`` data, load the policy and check its tokenizer."""
    from trl import get_peft_config

    from cellrlhf.ppo.model_loading import check_model_dir, load_policy
    from cellrlhf.ppo.prompt_tokenization import check_rl_tokenizer

    sft_dir = check_model_dir(sft_path, what="SFT policy", flag="--model_name_or_path")
    data = open_rl_data(script_args, seed=seed)
    policy, tokenizer, sft_info = load_policy(sft_dir, dtype=model_args.dtype)
    check_rl_tokenizer(tokenizer, require_distinct_pad=require_distinct_pad)
    peft_config = get_peft_config(model_args)
    return RLStart(sft_dir, sft_info, policy, tokenizer, data, peft_config, model_args.dtype)


def cell_constraint_for(
    script_args: CellRLScriptArguments, start: RLStart, *, max_answer_tokens: int
):
    """The policy's one-cell constraint when ``constrain_cells`` is set, else ``None``."""
    if not script_args.constrain_cells:
        return None
    from cellrlhf.ppo.constrained_policy import policy_cell_constraint

    return policy_cell_constraint(
        start.tokenizer, start.data.dataset.vocab(), max_answer_tokens=max_answer_tokens
    )


def assemble_run(
    trainer_cls,
    stage: str,
    start: RLStart,
    monitor,
    arguments: tuple,
    *,
    info: dict,
    **trainer_kwargs,
) -> RLRun:
    """Build the trainer, bind the monitor (``None``: off) to it and pack the run.

    ``trainer_cls`` gets the policy, tokenizer, LoRA config, training arguments, monitor and a
    fresh phase timer, plus ``trainer_kwargs``; ``arguments`` is ``(script_args, training_args,
    model_args)``; ``info`` holds the ``cellrlhf.json`` entries of ``stage`` (:func:`stage_info`).
    """
    from cellrlhf.ppo.phase_timing import PhaseTimer
    from cellrlhf.sft.model_dir import run_config_dict

    script_args, training_args, _ = arguments
    trainer = trainer_cls(
        model=start.policy,
        args=training_args,
        processing_class=start.tokenizer,
        peft_config=start.peft_config,
        callbacks=[monitor] if monitor is not None else None,
        phase_timer=PhaseTimer(),
        **trainer_kwargs,
    )
    if monitor is not None:
        monitor.bind(trainer)
    return RLRun(
        trainer,
        monitor,
        script_args,
        run_config_dict(stage, *arguments),
        start.sft_dir,
        start.data,
        stage_info(stage, start.sft_dir, start.sft_info, **info),
    )


def open_rl_data(script_args: CellRLScriptArguments, *, seed: int) -> RLData:
    """Open the data set directory and its ``rl/`` train / held-out splits.

    Raises
    ------
    DatasetDirError
        Without ``rl/`` data, a requested split, or the expression decoder.
    """
    dataset = open_dataset_dir(script_args.dataset_dir)
    rl = dataset.rl
    if rl is None:
        raise DatasetDirError(
            f"{dataset.path} has no rl/ data (prompts with real reference profiles); build it with "
            "`cellrlhf data build` on perturbation data."
        )
    heldout_split = script_args.dataset_test_split or _default_heldout_split(rl, dataset.path)
    for split in (script_args.dataset_train_split, heldout_split):
        if split not in rl:
            raise DatasetDirError(f"{dataset.path}/rl has no {split!r} split (has {list(rl)}).")
    decoder = dataset.decoder()
    train = rl[script_args.dataset_train_split]
    if script_args.max_train_prompts is not None and len(train) > script_args.max_train_prompts:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(train), size=script_args.max_train_prompts, replace=False))
        train = train.select(rows.tolist())
    if len(train) == 0:
        raise DatasetDirError(f"the {script_args.dataset_train_split!r} split has no prompts.")
    if "prompt" not in train.column_names:
        raise DatasetDirError(
            f"the rl/ train split has no `prompt` column (has {train.column_names})."
        )
    return RLData(dataset, train, rl[heldout_split], decoder, heldout_split)


def _default_heldout_split(rl, path) -> str:
    """``validation`` (held-out validation perturbations) when there is one, else ``test``."""
    if "validation" in rl and len(rl["validation"]) > 0:
        logger.info("the held-out monitor selects the policy on rl/validation of %s.", path)
        return "validation"
    logger.warning(
        "%s has no RL validation perturbations: the held-out monitor selects the policy on the "
        "test perturbations, so the kept policy's test figures are optimistic. Hold some out "
        "with split.n_validation_perturbations in the data config.",
        path,
    )
    return "test"


def build_heldout_monitor(
    script_args: CellRLScriptArguments,
    *,
    data: RLData,
    tokenizer,
    stop_ids: list[int],
    max_new_tokens: int,
    temperature: float,
    output_dir: str | Path,
):
    """The held-out monitor of the run, or ``None`` when ``heldout_every_steps`` is 0."""
    if script_args.heldout_every_steps == 0:
        logger.warning(
            "held-out monitoring is off (heldout_every_steps=0): nothing guards against reward "
            "hacking, and the last policy is saved unchecked."
        )
        return None
    from cellrlhf.ppo.heldout_evaluation import heldout_prompts_from_dataset
    from cellrlhf.ppo.heldout_monitor import HeldoutMonitor, HeldoutSettings
    from cellrlhf.ppo.model_selection import BestPolicySelector, resolve_selection_metric
    from cellrlhf.ppo.policy_output import BEST_DIRNAME

    prompts = heldout_prompts_from_dataset(
        data.heldout,
        max_prompts=script_args.heldout_max_prompts,
        seed=script_args.heldout_seed,
        train_mean_deltas=_train_mean_deltas(data, script_args),
    )
    selection_key = resolve_selection_metric(
        script_args.heldout_selection_metric,
        specific_weight=float(getattr(script_args, "specific_weight", 0.0) or 0.0),
        has_reference=all(p.reference_delta is not None for p in prompts),
    )
    logger.info("held-out selection metric: %s", selection_key)
    settings = HeldoutSettings(
        every_steps=script_args.heldout_every_steps,
        num_samples=script_args.heldout_num_samples,
        batch_size=script_args.heldout_batch_size,
        max_new_tokens=max_new_tokens,
        temperature=script_args.heldout_temperature or temperature,
        seed=script_args.heldout_seed,
        top_k_de=script_args.heldout_top_k_de,
        distance=script_args.heldout_distance,
        split=data.heldout_split,
    )
    selector = BestPolicySelector(
        min_distinct_ratio=script_args.min_distinct_ratio,
        min_entropy_ratio=script_args.min_entropy_ratio,
        patience=script_args.early_stopping_patience,
        min_delta=script_args.early_stopping_min_delta,
        fidelity_key=selection_key,
    )
    return HeldoutMonitor(
        prompts,
        tokenizer,
        data.decoder,
        settings=settings,
        selector=selector,
        stop_ids=stop_ids,
        output_dir=output_dir,
        best_dir=Path(output_dir) / BEST_DIRNAME if script_args.select_best else None,
    )


def _train_mean_deltas(data: RLData, script_args) -> dict:
    """Each cell context's mean training change over all ``rl/`` training rows (the reference of
    ``pearson_specific``); ``{}`` when the split has no rows or lacks the columns."""
    from cellrlhf.reward.specific_reference import context_mean_deltas_if_present

    rl = data.dataset.rl
    split = script_args.dataset_train_split
    return context_mean_deltas_if_present(rl[split] if rl and split in rl else None) or {}


def stage_info(stage: str, sft_dir: Path, sft_info: dict, **extra) -> dict:
    """``cellrlhf.json`` content of the RL model directory."""
    return {
        "stage": stage,
        "tokenizer_mode": sft_info.get("tokenizer_mode", "gene_tokens"),
        "base_model": sft_info.get("base_model") or str(sft_dir),
        "sft_model": str(sft_dir),
        **extra,
    }


def resume_checkpoint(trainer) -> str | None:
    """The checkpoint the run resumes from (``None``: from the start).

    Like every training stage, a re-run resumes from the latest complete checkpoint of the output
    directory unless ``--resume_from_checkpoint none`` or ``--overwrite_output_dir`` says to
    start over (:func:`cellrlhf.sft.checkpoints.resolve_resume`).
    """
    from cellrlhf.sft.checkpoints import resolve_resume

    args = trainer.args
    return resolve_resume(
        args.resume_from_checkpoint,
        args.output_dir,
        overwrite_output_dir=bool(getattr(args, "overwrite_output_dir", False)),
    )


def train_run(run: RLRun) -> None:
    """Train, resuming from the latest complete checkpoint by default (:func:`resume_checkpoint`)."""
    resume = resume_checkpoint(run.trainer)
    if resume is None:
        run.trainer.train()
    else:
        run.trainer.train(resume_from_checkpoint=resume)


def finish_run(run: RLRun) -> dict:
    """After training: save the kept policy, the timings and the trainer state; return a summary."""
    from cellrlhf.ppo.phase_timing import timing_summary
    from cellrlhf.ppo.policy_output import save_policy_dir

    trainer, monitor, script_args = run.trainer, run.monitor, run.script_args

    output_dir = Path(trainer.args.output_dir)
    last_step = int(trainer.state.global_step)
    selected = monitor.best_step if (monitor is not None and script_args.select_best) else None
    kept_metrics = {}
    if monitor is not None:
        by_step = {h["step"]: h["metrics"] for h in monitor.history}
        kept_metrics = by_step.get(selected if selected is not None else last_step, {})
        if selected == 0 and last_step > 0 and trainer.accelerator.is_main_process:
            logger.warning(
                "RL never beat the SFT model on held-out fidelity with diversity intact: the saved "
                "policy is the SFT policy (step 0). The last policy is in %s/last.",
                output_dir,
            )
    info = {
        **run.info,
        "selection": {
            "metric": monitor.selector.fidelity_key if monitor is not None else None,
            "heldout_split": run.data.heldout_split,
            "rule": "best held-out fidelity with diversity intact"
            if selected is not None
            else "last",
            "heldout": kept_metrics,
        },
    }
    save_policy_dir(
        trainer,
        output_dir,
        sft_dir=run.sft_dir,
        dataset=run.data.dataset,
        info=info,
        run_config=run.run_config,
        selected_step=selected,
        last_step=last_step,
        best_dir=monitor.best_dir if monitor is not None else None,
    )
    if trainer.accelerator.is_main_process:
        trainer.phase_timer.save(output_dir / TIMING_FILENAME)
        trainer.state.save_to_json(str(output_dir / "trainer_state.json"))
    trainer.accelerator.wait_for_everyone()
    return {
        "output_dir": str(output_dir),
        "selected_step": selected if selected is not None else last_step,
        "last_step": last_step,
        "heldout_split": run.data.heldout_split,
        "heldout": kept_metrics,
        "timing": timing_summary(trainer.phase_timer.history),
    }
