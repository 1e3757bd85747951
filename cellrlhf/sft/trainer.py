"""TRL's ``SFTTrainer`` with what cell language models need on top.

- atomic checkpoints (:mod:`cellrlhf.sft.checkpoints`): ``checkpoint-N`` appears only complete
  (staged through :class:`cellrlhf.trl_compat.StagedCheckpointHooks`);
- evaluation adds ``eval_perplexity`` and the generation metrics of
  :class:`~cellrlhf.sft.evaluation.GenerationEvaluator`, logged through the trainer's ``log`` so
  every ``report_to`` backend (tensorboard, wandb, ...) receives them;
- perturbation dropout on training batches only (:mod:`cellrlhf.sft.perturbation_dropout`);
- an optional unlikelihood term against repeated genes in a cell
  (:mod:`cellrlhf.sft.repeat_unlikelihood`), logged as ``repeat_mass`` / ``repeat_unlikelihood``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from transformers.trainer_utils import rotate_checkpoints
from trl import SFTTrainer

from cellrlhf.sft.checkpoints import STAGING_DIRNAME, publish_checkpoint, write_checkpoint_marker
from cellrlhf.sft.perturbation_dropout import PerturbationDropout, PerturbationDropoutCollator
from cellrlhf.sft.repeat_unlikelihood import RepeatUnlikelihood
from cellrlhf.trl_compat import StagedCheckpointHooks, check_trl_version, log_step_metric

__all__ = ["CellSFTTrainer", "perplexity"]

logger = logging.getLogger(__name__)


def perplexity(loss: float) -> float:
    """``exp(loss)``, capped to stay finite for diverged runs."""
    return float(math.exp(min(float(loss), 50.0)))


class CellSFTTrainer(StagedCheckpointHooks, SFTTrainer):
    """``SFTTrainer`` with atomic checkpoints, perplexity / generation metrics and perturbation dropout.

    Parameters
    ----------
    generation_evaluator
        Called as ``evaluator(model, accelerator)`` at every evaluation; its metrics are logged
        with the ``eval_`` prefix. ``None`` turns generation metrics off.
    perturbation_dropout
        Applied to training batches (never to evaluation batches). ``None`` turns it off.
    repeat_unlikelihood
        Added to the training loss with its weight; at evaluation only its ``repeat_mass`` is
        logged, so ``eval_loss`` and perplexity stay plain cross-entropy. ``None`` turns it off.
    **kwargs
        Everything :class:`trl.SFTTrainer` takes.
    """

    def __init__(
        self,
        *args,
        generation_evaluator=None,
        perturbation_dropout: PerturbationDropout | None = None,
        repeat_unlikelihood: RepeatUnlikelihood | None = None,
        **kwargs,
    ) -> None:
        check_trl_version()
        super().__init__(*args, **kwargs)
        self.repeat_unlikelihood = repeat_unlikelihood
        self.generation_evaluator = generation_evaluator
        self.perturbation_dropout = perturbation_dropout
        self._pending_eval_logs: dict[str, float] = {}

    # ------------------------------------------------------------------ data
    def get_train_dataloader(self):
        if self.perturbation_dropout is None or self.perturbation_dropout.probability == 0.0:
            return super().get_train_dataloader()
        plain = self.data_collator
        self.data_collator = PerturbationDropoutCollator(plain, self.perturbation_dropout)
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = plain

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.repeat_unlikelihood is None:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        input_ids, labels = inputs["input_ids"], inputs.get("labels")
        position_ids = inputs.get("position_ids")
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if getattr(outputs, "logits", None) is None:
            raise ValueError(
                "repeat_unlikelihood_weight needs the model's logits, which this loss path does not "
                "return (use_liger_kernel or a chunked loss); turn one of them off."
            )
        terms = self.repeat_unlikelihood.terms(
            outputs.logits, input_ids, labels=labels, position_ids=position_ids
        )
        if terms.positions:
            log_step_metric(self, "repeat_mass", float(terms.repeat_mass) / terms.positions)
            log_step_metric(
                self, "repeat_unlikelihood", float(terms.unlikelihood.detach()) / terms.positions
            )
        if self.model.training:
            # normalised like the cross-entropy: per trained token of the (accumulated) batch
            if num_items_in_batch is not None:
                denominator = num_items_in_batch
            else:
                denominator = max(1, int((labels != -100).sum())) if labels is not None else 1
            loss = loss + self.repeat_unlikelihood.weight * terms.unlikelihood / denominator
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        self._pending_eval_logs = {}
        if self.generation_evaluator is not None and metric_key_prefix == "eval":
            generated = self.generation_evaluator(self.model, self.accelerator)
            self._pending_eval_logs = {f"{metric_key_prefix}_{k}": v for k, v in generated.items()}
        self._pending_eval_prefix = metric_key_prefix
        return super().evaluate(
            eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        prefix = getattr(self, "_pending_eval_prefix", "eval")
        loss = logs.get(f"{prefix}_loss")
        if loss is not None:
            logs[f"{prefix}_perplexity"] = perplexity(loss)
            logs.update(self._pending_eval_logs)
            self._pending_eval_logs = {}
        super().log(logs, start_time)

    # ------------------------------------------------------------------ checkpoints
    checkpoint_staging_dirname = STAGING_DIRNAME

    def publish_staged_checkpoint(
        self, staged: str, final: str, run_dir: str, save_total_limit: int | None
    ) -> None:
        """Mark the staged ``checkpoint-N`` complete, move it in place, then rotate old ones."""
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self._point_best_checkpoint_at(staged, final)
            write_checkpoint_marker(staged, step=self.state.global_step)
            publish_checkpoint(staged, final)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()

    def _point_best_checkpoint_at(self, staged: str, final: str) -> None:
        """The trainer recorded the best checkpoint under its staging path: record the final one."""
        best = self.state.best_model_checkpoint
        if best is not None and Path(best) == Path(staged):
            from transformers.trainer import TRAINER_STATE_NAME

            self.state.best_model_checkpoint = final
            self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
