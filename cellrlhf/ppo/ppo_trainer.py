"""TRL's experimental ``PPOTrainer`` with what cell RL needs on top.

- **Per-phase timing**: TRL's PPO loop is one method; the module-level helpers it calls
  (``batch_generation``, ``get_reward``, ``forward``) are wrapped for the duration of
  :meth:`CellPPOTrainer.train` only (:func:`cellrlhf.trl_compat.ppo_helper_hooks`), so each step is split into generation, reward (reward
  model), value (value model), logprobs (reference forward) and update (the PPO epochs: the
  remainder of the step). See :mod:`cellrlhf.ppo.phase_timing`.
- **Early stopping**: TRL's PPO loop ignores ``control.should_training_stop``; the training
  batches are drawn through :class:`_StoppableBatches`, which ends training cleanly (callbacks'
  ``on_train_end`` included) before the next step once a callback asks to stop.
- **Resume** (:mod:`cellrlhf.ppo.ppo_resume`): TRL 1.12's ``train`` has none (it resets the
  state and loops over updates ``1..num_total_batches``). ``train(resume_from_checkpoint=...)``
  loads a PPO checkpoint, runs TRL's loop over the remaining updates only, restores the state
  (update, episode, log history, monitor) in ``on_train_begin`` and replays the prompt order
  (:class:`_StoppableBatches`); TRL's checkpoint hook writes checkpoints that hold all of it
  (:meth:`CellPPOTrainer.save_resumable_checkpoint`).
  Not under DeepSpeed: there no checkpoint is written.
- **Saving under DeepSpeed**: TRL 1.12's ``save_model`` points transformers' DeepSpeed save
  path at the bare policy (trl#2885: ``'...ForCausalLM' object has no attribute
  'zero_gather_16bit_weights_on_model_save'``); here the policy's weights are gathered from the
  policy-and-value engine (ZeRO-3: ``zero3_save_16bit_model: true`` is needed) and saved alone.
- **Held-out monitor hooks** (:mod:`cellrlhf.ppo.heldout_monitor`).
- **Constrained policy** (``cell_constraint``, :mod:`cellrlhf.ppo.constrained_policy`): TRL's PPO
  takes every log-probability from the two patched helpers, so the same mask reaches all of
  them: ``batch_generation`` samples under the grammar (a logits processor), and its rollout
  log-probs are read from ``generate``'s processed scores, i.e. the masked, temperature-scaled
  logits; ``forward`` (the reference's log-probs, and the policy's in the PPO update) returns
  the masked logits (:func:`~cellrlhf.ppo.constrained_policy.masked_logits`). Ratios, the KL
  penalty and the gradients are those of the constrained distribution; the value model reads
  the same sequences unchanged.

Everything that reaches into TRL's private API is in :mod:`cellrlhf.trl_compat`; this module
implements its hooks (``timed_phase``, ``generation_context``, ``policy_logits``,
``save_resumable_checkpoint``).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext

from transformers import Trainer
from trl.experimental.ppo import PPOTrainer

from cellrlhf.ppo.phase_timing import PhaseTimer
from cellrlhf.ppo.ppo_resume import (
    LoaderPosition,
    ResumePoint,
    capture_rng_states,
    load_ppo_checkpoint,
    prepare_fresh_start,
    restore_rng_states,
    restore_trainer_state,
    save_ppo_checkpoint,
)
from cellrlhf.trl_compat import (
    PPOTrainerHooks,
    check_trl_version,
    ppo_helper_hooks,
    ppo_policy_state,
    ppo_update_range_built,
    ppo_updates_after,
)

__all__ = ["CellPPOTrainer", "TrainingStopped"]

logger = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """Raised between PPO steps when a callback set ``control.should_training_stop``."""


class _StoppableBatches:
    """The PPO training data loader: ends training when asked, marks step starts, and keeps
    its position (RNG states at the start of the pass, batches drawn) so a resumed run replays
    the same prompt order."""

    def __init__(self, loader, trainer: CellPPOTrainer) -> None:
        self.loader = loader
        self.trainer = trainer
        self.position = LoaderPosition()
        self.resume: ResumePoint | None = None

    def __iter__(self):
        generator = getattr(self.loader, "synchronized_generator", None)
        resume, self.resume = self.resume, None
        if resume is not None:
            ppo_update_range_built(self.trainer)
        if resume is not None and 0 < resume.loader.batches < len(self.loader):
            # restart the interrupted pass from its saved RNG state and skip the batches used
            restore_rng_states(resume.loader.pass_rng, generator)
            self.position = LoaderPosition(resume.loader.pass_rng, 0)
            batches = iter(self.loader)
            for _ in range(resume.loader.batches):
                next(batches)
                self.position.batches += 1
            restore_rng_states(resume.rng, generator)
        else:
            if resume is not None:
                restore_rng_states(resume.rng, generator)
            self.position = LoaderPosition(capture_rng_states(generator), 0)
            batches = iter(self.loader)
        for batch in batches:
            if self.trainer.control.should_training_stop:
                raise TrainingStopped
            self.position.batches += 1
            self.trainer._begin_step()
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


class CellPPOTrainer(PPOTrainerHooks, PPOTrainer):
    """``PPOTrainer`` with phase timing, early stopping, DeepSpeed-safe saving and monitor hooks.

    Parameters
    ----------
    phase_timer
        Receives the timing of every step (a fresh one when ``None``).
    cell_constraint
        A :class:`~cellrlhf.cell2text.sentence_constraints.CellSentenceConstraint`: train the
        constrained policy (``None``: the unconstrained one).
    **kwargs
        Everything ``trl.experimental.ppo.PPOTrainer`` takes.
    """

    writes_checkpoint_marker = True  # checkpoints are resumed only when complete (marker)

    def __init__(
        self, *args, phase_timer: PhaseTimer | None = None, cell_constraint=None, **kwargs
    ) -> None:
        check_trl_version()
        super().__init__(*args, **kwargs)
        self.phase_timer = phase_timer or PhaseTimer()
        self.cell_constraint = cell_constraint
        self.dataloader = _StoppableBatches(self.dataloader, self)
        self._step_open = False

    # ------------------------------------------------------------------ training
    def train(self, resume_from_checkpoint: str | None = None):
        """Train; with ``resume_from_checkpoint`` (a PPO ``checkpoint-N``), continue after update N.

        The checkpoint's weights, optimizer and scheduler are loaded first (a checkpoint of
        another configuration is refused, :class:`~cellrlhf.ppo.ppo_resume.PPOResumeError`).
        TRL's loop always starts at update 1 and resets the state: it is given the remaining
        updates only, the state is restored as training begins, and the loader replays the
        prompt order up to the checkpoint (:class:`_StoppableBatches`).
        """
        resume = None
        if resume_from_checkpoint is not None:
            resume = load_ppo_checkpoint(self, resume_from_checkpoint)
        elif self.args.should_save:
            prepare_fresh_start(self.args.output_dir)
        self.accelerator.wait_for_everyone()
        with self._timed_phases(), self._resumed_loop(resume):
            try:
                super().train()
            except TrainingStopped:
                logger.info("training stopped early at step %d", self.state.global_step)
                self.control = self.callback_handler.on_train_end(
                    self.args, self.state, self.control
                )

    @contextmanager
    def _resumed_loop(self, resume: ResumePoint | None):
        """Run TRL's loop over the updates after the checkpoint, with the state restored."""
        if resume is None:
            yield
            return

        def restore(total: int) -> None:
            restore_trainer_state(self, resume, max_steps=total)

        with ppo_updates_after(self, resume.step, restore):
            self.dataloader.resume = resume
            try:
                yield
            finally:
                self.dataloader.resume = None

    def _begin_step(self) -> None:
        self.phase_timer.begin_step()
        self._step_open = True

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._step_open:  # PPO logs once per step, right after its PPO epochs
            self._step_open = False
            self.phase_timer.end_step(self.state.global_step, remainder="update")
            logs = {**logs, **self.phase_timer.pop_log_dict()}
        super().log(logs, start_time)

    @contextmanager
    def _timed_phases(self):
        """Wrap TRL's PPO helpers with phase timers (and the cell grammar) while training runs."""
        with ppo_helper_hooks(self):
            yield

    # ------------------------------------------------------------------ hooks of ppo_helper_hooks
    def timed_phase(self, name: str):
        """The timer of phase ``name`` (generation, reward, value, logprobs)."""
        return self.phase_timer.phase(name)

    def generation_context(self, model):
        """Rollouts are sampled under the cell grammar when the policy is constrained."""
        if self.cell_constraint is None:
            return nullcontext()
        from transformers import LogitsProcessorList

        from cellrlhf.ppo.constrained_policy import constrained_generation

        return constrained_generation(model, LogitsProcessorList([self.cell_constraint]))

    def policy_logits(self, ids, logits):
        """The constrained policy's masked logits (unchanged when unconstrained)."""
        if self.cell_constraint is None:
            return logits
        from cellrlhf.ppo.constrained_policy import masked_logits

        return masked_logits(self.cell_constraint, ids, logits)

    # ------------------------------------------------------------------ saving
    def save_resumable_checkpoint(self) -> None:
        """A resumable PPO checkpoint (:func:`~cellrlhf.ppo.ppo_resume.save_ppo_checkpoint`)."""
        if self.is_deepspeed_enabled:
            if not getattr(self, "_warned_deepspeed_checkpoint", False):
                logger.warning(
                    "PPO checkpoints are not written under DeepSpeed (its partitioned optimizer "
                    "state is not saved by cellrlhf): a killed run starts over."
                )
                self._warned_deepspeed_checkpoint = True
            return
        save_ppo_checkpoint(self, self.dataloader.position)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save the policy only (not the value head), on every DeepSpeed stage."""
        if not self.is_deepspeed_enabled:
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        engine = self.model  # the policy-and-value DeepSpeed engine (prepared in __init__)
        stage = self.accelerator.state.deepspeed_plugin.zero_stage
        if stage == 3:
            if not engine.zero_gather_16bit_weights_on_model_save():
                raise ValueError(
                    "PPO under ZeRO-3 saves full weights only with `zero3_save_16bit_model: true` in "
                    "the accelerate config (stage3_gather_16bit_weights_on_model_save)."
                )
            full = engine._zero3_consolidated_16bit_state_dict()  # every rank takes part
        else:
            full = engine.module.state_dict() if self.args.should_save else None
        if self.args.should_save:
            policy = self.accelerator.unwrap_model(self.model).policy
            state = ppo_policy_state(full)
            os.makedirs(output_dir, exist_ok=True)
            policy.save_pretrained(output_dir, state_dict=state, safe_serialization=True)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ monitor hooks
    @contextmanager
    def monitor_policy(self):
        """The policy, unwrapped and (ZeRO-3) gathered, for sampling and log-probs."""
        from trl.models.utils import unwrap_model_for_generation

        with unwrap_model_for_generation(
            self.model, self.accelerator, gather_deepspeed3_params=True
        ) as unwrapped:
            yield unwrapped.policy

    @contextmanager
    def monitor_reference(self, policy):
        """The frozen reference: the reference model, or the policy with adapters disabled."""
        if self.ref_model is not None:
            yield self.ref_model
        elif self.is_peft_model:
            with policy.disable_adapter():
                yield policy
        else:
            raise RuntimeError("PPO has neither a reference model nor LoRA adapters to disable.")

    def log_heldout(self, metrics: dict[str, float]) -> None:
        """Log the monitor's metrics as their own row (every ``report_to`` backend)."""
        pending = self.control.should_log  # on_log clears it: keep the step's own log due
        Trainer.log(self, metrics)
        self.control.should_log = pending

    def monitor_reward_model(self):
        """The learned reward model PPO optimises."""
        return self.reward_model
