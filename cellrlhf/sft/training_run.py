"""One training run of the ``pretrain`` or ``sft`` stage, from parsed arguments to a saved model.

Both stages share this flow (they differ in their data and defaults):

1. open the dataset directory, load the training / evaluation splits;
2. build the model and tokenizer (:mod:`cellrlhf.sft.model_factory`);
3. train with :class:`~cellrlhf.sft.trainer.CellSFTTrainer` (TRL ``SFTTrainer``), resuming from
   the latest complete checkpoint of the output directory unless told to start over;
4. evaluate (loss, perplexity, generation metrics) and save the model directory.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cellrlhf.cell2text.markup import CELL_END, CELL_START
from cellrlhf.data.layout import DatasetDir, DatasetDirError, open_dataset_dir
from cellrlhf.sft.checkpoints import clear_staging, resolve_resume

__all__ = [
    "StageResult",
    "run_training",
    "train_stage",
    "final_evaluation",
    "load_training_splits",
    "tokenizer_texts",
]

logger = logging.getLogger(__name__)

Stage = Literal["pretrain", "sft"]
_CELL_SPAN = re.compile(re.escape(CELL_START) + r".*?(?:" + re.escape(CELL_END) + r"|$)", re.S)


@dataclass
class StageResult:
    """What a finished run leaves: the trainer (model in memory) and the saved model directory."""

    trainer: object
    output_dir: Path
    metrics: dict


def run_training(stage: Stage, script_args, training_args, model_args) -> Path:
    """Train, evaluate and save; returns the model directory (``training_args.output_dir``)."""
    return train_stage(stage, script_args, training_args, model_args).output_dir


def train_stage(
    stage: Stage, script_args, training_args, model_args, *, callbacks=()
) -> StageResult:
    """Train, evaluate and save; returns the trainer too (for callers that keep working with it).

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (timers, custom logging).
    """
    from cellrlhf.sft.model_dir import run_config_dict, save_model_dir
    from cellrlhf.sft.model_factory import build_model_and_tokenizer, peft_config_for
    from cellrlhf.sft.trainer import CellSFTTrainer

    _setup_logging(training_args)
    _check_arguments(stage, training_args, model_args)
    dataset = open_dataset_dir(script_args.dataset_dir)
    train, evaluation = load_training_splits(stage, dataset, script_args, seed=training_args.seed)
    logger.info(
        "%s: %d training and %d evaluation examples from %s",
        stage,
        len(train),
        0 if evaluation is None else len(evaluation),
        dataset.path,
    )

    output_dir = Path(training_args.output_dir)
    resume = resolve_resume(
        training_args.resume_from_checkpoint,
        output_dir,
        overwrite_output_dir=training_args.overwrite_output_dir,
    )
    bundle = build_model_and_tokenizer(
        model_args,
        training_args,
        dataset,
        texts=lambda: tokenizer_texts(dataset),
        tokenizer_from=resume,
    )
    peft_config = peft_config_for(model_args, bundle)
    evaluator = _generation_evaluator(stage, evaluation, dataset, bundle.tokenizer, training_args)
    callbacks = list(callbacks)
    dropout = _perturbation_dropout(stage, bundle, training_args, callbacks)
    repeat_term = None
    if training_args.repeat_unlikelihood_weight > 0:
        from cellrlhf.sft.repeat_unlikelihood import RepeatUnlikelihood

        repeat_term = RepeatUnlikelihood(
            bundle.tokenizer, dataset.vocab(), training_args.repeat_unlikelihood_weight
        )

    trainer = CellSFTTrainer(
        model=bundle.model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=bundle.tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        generation_evaluator=evaluator,
        perturbation_dropout=dropout,
        repeat_unlikelihood=repeat_term,
    )

    metrics = _train_and_evaluate(
        trainer, output_dir, resume=resume, evaluate=evaluation is not None
    )
    save_model_dir(
        trainer,
        output_dir,
        info=_model_info(stage, bundle, dataset),
        dataset=dataset,
        run_config=run_config_dict(stage, script_args, training_args, model_args),
        peft_save=training_args.peft_save,
    )
    return StageResult(trainer, output_dir, metrics)


def _train_and_evaluate(trainer, output_dir: Path, *, resume, evaluate: bool) -> dict:
    """Train (from ``resume`` when set), save the trainer state; the final evaluation's metrics."""
    if trainer.args.should_save:
        clear_staging(output_dir)
    trainer.accelerator.wait_for_everyone()
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_state()
    if not evaluate:
        return {}
    metrics = final_evaluation(trainer)
    trainer.save_metrics("eval", metrics)
    return metrics


def _generation_evaluator(stage: Stage, evaluation, dataset: DatasetDir, tokenizer, args):
    """The generation metrics of evaluation (``None`` without an evaluation split or samples)."""
    if evaluation is None or args.eval_generation_samples <= 0:
        return None
    from cellrlhf.sft.evaluation import (
        GenerationEvaluator,
        fidelity_references,
        pretrain_generation_examples,
        sft_generation_examples,
    )

    pick = pretrain_generation_examples if stage == "pretrain" else sft_generation_examples
    examples = pick(evaluation, args.eval_generation_samples, seed=args.seed)
    references = {}
    if stage == "sft" and args.eval_fidelity_perturbations > 0:
        references = fidelity_references(dataset.rl)
    return GenerationEvaluator(
        examples,
        tokenizer,
        dataset.decoder(required=False),
        max_new_tokens=args.eval_generation_max_new_tokens,
        batch_size=args.eval_generation_batch_size,
        temperature=args.eval_generation_temperature,
        seed=args.seed,
        references=references,
        fidelity_perturbations=args.eval_fidelity_perturbations,
        fidelity_cells=args.eval_fidelity_cells,
        constrain_cells=args.eval_generation_constrained,
    )


def _perturbation_dropout(stage: Stage, bundle, args, callbacks: list):
    """SFT's perturbation dropout (``None``: off); its callback is appended to ``callbacks``."""
    if stage != "sft" or args.perturbation_dropout <= 0:
        return None
    from cellrlhf.sft.perturbation_dropout import PerturbationDropout, PerturbationDropoutCallback

    dropout = PerturbationDropout(
        bundle.tokenizer, probability=args.perturbation_dropout, seed=args.seed
    )
    dropout.check_round_trip(bundle.gene_examples)
    callbacks.append(PerturbationDropoutCallback(dropout))
    return dropout


def _model_info(stage: Stage, bundle, dataset: DatasetDir) -> dict:
    """``cellrlhf.json`` content of the trained model."""
    from cellrlhf import __version__

    return {
        "stage": stage,
        "tokenizer_mode": bundle.tokenizer_mode,
        "base_model": bundle.base_model,
        "added_gene_tokens": len(bundle.new_token_ids),
        "perturbation_targets": dataset.perturbation_targets(),
        "dataset": {"path": str(dataset.path), "fingerprint": dataset.manifest.get("fingerprint")},
        "cellrlhf_version": __version__,
    }


def final_evaluation(trainer) -> dict[str, float]:
    """Evaluation metrics of the trained model.

    When the trainer already evaluated after its last step (``eval_strategy`` epoch or steps
    ending there) and the weights were not swapped since (no ``load_best_model_at_end``), that
    evaluation is returned instead of running the same one again; generation metrics make an
    evaluation cost minutes on CPU.
    """
    if not trainer.args.load_best_model_at_end:
        step = trainer.state.global_step
        for entry in reversed(trainer.state.log_history):
            if entry.get("step") != step:
                break
            if "eval_loss" in entry:
                logger.info("final evaluation: reusing the evaluation of step %d", step)
                return {k: v for k, v in entry.items() if k.startswith("eval_") or k == "epoch"}
    return trainer.evaluate()


def load_training_splits(stage: Stage, dataset: DatasetDir, script_args, *, seed: int):
    """``(train, evaluation)`` datasets of a stage; evaluation is ``None`` when there is none."""
    from datasets import Dataset

    if stage == "pretrain":
        data = dataset.load_pretrain()
        if isinstance(data, Dataset):
            fraction = script_args.eval_holdout_fraction
            if fraction and fraction > 0 and len(data) > 1:
                parts = data.train_test_split(test_size=fraction, seed=seed)
                train, evaluation = parts["train"], parts["test"]
            else:
                train, evaluation = data, None
        else:
            train = _split(data, script_args.dataset_train_split, dataset.path / "pretrain")
            evaluation = data.get(script_args.dataset_test_split)
    else:
        data = dataset.load_sft()
        train = _split(data, script_args.dataset_train_split, dataset.path / "sft")
        evaluation = data.get(script_args.dataset_test_split)
        if script_args.tasks:
            wanted = set(script_args.tasks)
            known = set(train.unique("task"))
            if not wanted & known:
                raise DatasetDirError(
                    f"--tasks {sorted(wanted)} match none of the dataset's tasks {sorted(known)}."
                )
            train = train.filter(lambda t: t in wanted, input_columns="task")
            if evaluation is not None:
                evaluation = evaluation.filter(lambda t: t in wanted, input_columns="task")
    if evaluation is None:
        logger.warning(
            "no evaluation split: loss, perplexity and generation metrics are not evaluated."
        )
    train = _limit(train, script_args.max_train_samples, seed)
    evaluation = _limit(evaluation, script_args.max_eval_samples, seed)
    if len(train) == 0:
        raise DatasetDirError(f"the {stage} training split of {dataset.path} is empty.")
    return train, evaluation


def tokenizer_texts(dataset: DatasetDir) -> list[str]:
    """The distinct natural-language texts of the dataset, for fitting a fresh cell tokenizer.

    Prompts and answers of the SFT training split and the metadata prefixes of the pretraining
    corpus, with cell sentences cut out (genes get their own tokens). Reading both means a
    tokenizer built for pretraining also writes the later SFT prompts compactly.
    """
    from datasets import DatasetDict

    texts: dict[str, None] = {}
    if (dataset.path / "sft").exists():
        sft = dataset.load_sft()
        split = sft["train"] if "train" in sft else next(iter(sft.values()))
        for messages in split["messages"]:
            for message in messages:
                texts.setdefault(_without_cells(message["content"]))
    if (dataset.path / "pretrain").exists():
        data = dataset.load_pretrain()
        split = (
            data.get("train", next(iter(data.values()))) if isinstance(data, DatasetDict) else data
        )
        for text in split["text"]:
            texts.setdefault(_without_cells(text))
    return [t for t in texts if t.strip()]


def _without_cells(text: str) -> str:
    return _CELL_SPAN.sub(" ", text)


def _split(data, name: str, where: Path):
    if name not in data:
        raise DatasetDirError(
            f"{where} has no split {name!r} (splits: {list(data)}); pass --dataset_train_split."
        )
    return data[name]


def _limit(data, n: int | None, seed: int):
    if data is None or n is None or n >= len(data):
        return data
    return data.shuffle(seed=seed).select(range(n))


def _check_arguments(stage: Stage, training_args, model_args) -> None:
    if not model_args.model_config and not model_args.model_name_or_path:
        raise ValueError(
            "no model given: pass --model_config configs/model/<preset>.yaml for a fresh model, or "
            "--model_name_or_path <checkpoint, cellrlhf model dir or Hub id>."
        )
    if model_args.use_peft and training_args.peft_save == "adapter" and model_args.model_config:
        raise ValueError(
            "peft_save=adapter needs a base model on disk (--model_name_or_path); a model built from "
            "--model_config exists only in this run. Use peft_save=merged."
        )
    plugin = getattr(training_args, "deepspeed_plugin", None)
    if (
        model_args.use_peft
        and training_args.peft_save == "merged"
        and plugin is not None
        and plugin.zero_stage == 3
    ):
        raise ValueError(
            "merging LoRA adapters is not supported under DeepSpeed ZeRO-3 (the weights are sharded); "
            "set peft_save: adapter, or train with ZeRO-2."
        )
    if (
        stage == "sft"
        and training_args.perturbation_dropout > 0
        and not training_args.assistant_only_loss
    ):
        raise ValueError(
            "perturbation dropout edits prompts only, and tells prompts from answers by the "
            "assistant-only loss mask; set assistant_only_loss: true or perturbation_dropout: 0."
        )
    if stage == "sft" and training_args.packing and training_args.perturbation_dropout > 0:
        raise ValueError(
            "perturbation dropout edits individual prompts and cannot run on packed sequences; set "
            "packing: false (SFT chats are short) or perturbation_dropout: 0."
        )


def _setup_logging(training_args) -> None:
    import transformers

    level = training_args.get_process_log_level()
    package_logger = logging.getLogger("cellrlhf")
    package_logger.setLevel(level)
    if not logging.getLogger().handlers and not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package_logger.addHandler(handler)
    transformers.utils.logging.set_verbosity(level)
