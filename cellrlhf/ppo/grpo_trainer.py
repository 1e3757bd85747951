"""TRL's ``GRPOTrainer`` and ``RLOOTrainer`` with per-phase timing and held-out monitor hooks.

Completions reach the reward functions with their cell markup (``<cell> ... </cell>``): TRL
decodes them with ``skip_special_tokens=True``, which would drop the markup tokens the decoder
and the reward model read; they are decoded again up to the end token, markup kept.

Timing (see :mod:`cellrlhf.ppo.phase_timing`), with exclusive phases around TRL's own methods
(hooked in :class:`cellrlhf.trl_compat.GRPOTrainerHooks`, which reaches TRL's private API):

- ``generation``: ``_generate`` (sampling the group of completions);
- ``reward``: ``_calculate_rewards`` (every reward function / reward model);
- ``logprobs``: the rest of ``_generate_and_score_completions`` (old-policy and reference
  log-probs for the importance ratio and the KL term, advantages);
- ``update``: the rest of ``training_step`` (loss forward + backward);
- ``other``: the rest of the optimizer step (optimizer, data, callbacks).

A step spans ``on_step_begin`` to ``on_step_end`` of one optimizer step (all its gradient
accumulation micro-steps); the held-out monitor runs after the step is closed, so its time is
not counted. Mean timings since the previous log are added to each training log line.

With a ``cell_constraint`` the policy is the constrained distribution
(:mod:`cellrlhf.ppo.constrained_policy`): generation runs under the cell grammar and every
log-probability TRL computes (policy, old policy, reference) uses the same masked logits. With
``sample_checks`` (:class:`~cellrlhf.ppo.sample_checks.SampleChecks`) each generation step logs
``cells/fully_valid_fraction`` and ``cells/budget_hit_fraction`` and warns on cut answers.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext

from transformers import Trainer, TrainerCallback
from trl import GRPOTrainer, RLOOTrainer

from cellrlhf.ppo.phase_timing import PhaseTimer
from cellrlhf.trl_compat import (
    GRPOTrainerHooks,
    RLOOTrainerHooks,
    check_trl_version,
    log_step_metric,
    uses_continuous_batching,
)

__all__ = ["CellGRPOTrainer", "CellRLOOTrainer"]

logger = logging.getLogger(__name__)


class _StepBoundaries(TrainerCallback):
    """Open and close the timer's steps at the trainer's optimizer-step boundaries."""

    def __init__(self, timer: PhaseTimer) -> None:
        self.timer = timer

    def on_step_begin(self, args, state, control, **kwargs):
        self.timer.begin_step()

    def on_step_end(self, args, state, control, **kwargs):
        self.timer.end_step(state.global_step)


class _CellRLMixin:
    """Phase timing and monitor hooks shared by the GRPO and RLOO trainers.

    Parameters
    ----------
    phase_timer
        Receives every step's timing (a fresh one when ``None``).
    monitor_reference_model
        Frozen reference for the monitor's KL when the trainer keeps none (``beta=0`` with
        full fine-tuning); prepared here for the accelerator.
    monitor_reward_model
        Learned reward model scored by the monitor when it is not one of the reward functions.
    cell_constraint
        A :class:`~cellrlhf.cell2text.sentence_constraints.CellSentenceConstraint`: train the
        constrained policy (``None``: the unconstrained one).
    sample_checks
        A :class:`~cellrlhf.ppo.sample_checks.SampleChecks` run on every generation step.
    """

    def __init__(
        self,
        *args,
        phase_timer: PhaseTimer | None = None,
        monitor_reference_model=None,
        monitor_reward_model=None,
        cell_constraint=None,
        sample_checks=None,
        **kwargs,
    ) -> None:
        check_trl_version()
        self.phase_timer = phase_timer or PhaseTimer()
        self.cell_constraint = cell_constraint
        self.sample_checks = sample_checks
        # first callback: the step is closed before any other callback (the monitor) runs
        kwargs["callbacks"] = [_StepBoundaries(self.phase_timer), *(kwargs.get("callbacks") or [])]
        super().__init__(*args, **kwargs)
        if cell_constraint is not None and uses_continuous_batching(self):
            raise ValueError(
                "constrain_cells needs transformers' generate (continuous batching takes no logits "
                "processor); turn one of them off."
            )
        self._monitor_reference_model = self._prepare_frozen(monitor_reference_model)
        self._monitor_reward_model = self._prepare_frozen(monitor_reward_model)

    def _prepare_frozen(self, model):
        if model is None:
            return None
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            return prepare_deepspeed(model, self.accelerator)
        return self.accelerator.prepare_model(model, evaluation_mode=True)

    # ------------------------------------------------------------------ hooks of trl_compat
    def timed_phase(self, name: str):
        """The timer of phase ``name`` (generation, reward, logprobs)."""
        return self.phase_timer.phase(name)

    def completion_texts(self, completion_ids) -> list[str]:
        """The completions the rewards read: decoded up to the end token, cell markup kept.

        TRL decodes with ``skip_special_tokens=True``, which drops the ``<cell> ... </cell>``
        markup tokens: rewards (and the reward model, trained on marked answers) read them.
        With ``sample_checks`` their metrics are logged for this generation step.
        """
        texts = [self._answer_text(ids) for ids in completion_ids]
        if self.sample_checks is not None:
            for name, value in self.sample_checks(texts, completion_ids).items():
                log_step_metric(self, name, value)
        return texts

    def generation_context(self, policy):
        """The policy samples under the cell grammar when it is constrained."""
        if self.cell_constraint is None:
            return nullcontext()
        from transformers import LogitsProcessorList

        from cellrlhf.ppo.constrained_policy import constrained_generation

        return constrained_generation(policy, LogitsProcessorList([self.cell_constraint]))

    def scoring_model(self, model):
        """The model every log-probability is read from: the constrained policy's masked logits."""
        if self.cell_constraint is None:
            return model
        from cellrlhf.ppo.constrained_policy import ConstrainedLM

        return ConstrainedLM(model, self.cell_constraint)

    def _answer_text(self, ids) -> str:
        from cellrlhf.sampling import answer_text

        return answer_text(self.processing_class, ids, [self.processing_class.eos_token_id])

    def training_step(self, model, inputs, num_items_in_batch=None):
        with self.phase_timer.phase("update"):
            return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            logs = {**logs, **self.phase_timer.pop_log_dict()}
        super().log(logs, start_time)

    # ------------------------------------------------------------------ monitor hooks
    def log_heldout(self, metrics: dict[str, float]) -> None:
        """Log the monitor's metrics as their own row (TRL's pending train metrics stay)."""
        pending = self.control.should_log  # on_log clears it: keep the step's own log due
        Trainer.log(self, metrics)
        self.control.should_log = pending

    @contextmanager
    def monitor_policy(self):
        """The policy, unwrapped and (ZeRO-3) gathered, for sampling and log-probs."""
        from trl.models import unwrap_model_for_generation

        with unwrap_model_for_generation(
            self.model_wrapped, self.accelerator, gather_deepspeed3_params=True
        ) as unwrapped:
            yield unwrapped

    @contextmanager
    def monitor_reference(self, policy):
        """The frozen reference: TRL's, the base model under LoRA, or the monitor's own copy."""
        from peft import PeftModel

        if self.ref_model is not None:
            yield self.ref_model
        elif isinstance(policy, PeftModel):
            with policy.disable_adapter():
                yield policy
        elif self._monitor_reference_model is not None:
            yield self._monitor_reference_model
        else:
            raise RuntimeError(
                "no reference model for the KL estimate: pass monitor_reference_model when beta=0."
            )

    def monitor_reward_model(self):
        """The learned reward model among the reward functions, else the monitor's own."""
        from torch import nn

        for func in self.reward_funcs:
            if isinstance(func, nn.Module):
                return func
        return self._monitor_reward_model


class CellGRPOTrainer(_CellRLMixin, GRPOTrainerHooks, GRPOTrainer):
    """:class:`trl.GRPOTrainer` with phase timing and held-out monitor hooks."""


class CellRLOOTrainer(_CellRLMixin, RLOOTrainerHooks, RLOOTrainer):
    """:class:`trl.RLOOTrainer` with phase timing and held-out monitor hooks."""
