"""Every TRL-version-specific hook of cellrlhf, in one place (TRL 1.12.0).

The project's trainers subclass TRL's and change a few things TRL offers no public hook for.
Whatever reaches into TRL's private API (methods whose names start with ``_``, the module-level
helpers of ``trl.experimental.ppo``, the layout of tuples TRL passes between its own methods,
the order of things inside TRL's training loops) lives here; the trainers implement named,
public hooks and otherwise use public TRL API:

- :func:`check_trl_version`, called where every trainer is built: one clear error on a TRL
  release other than :data:`SUPPORTED_TRL`, naming the fix (``pip install trl==1.12.0``);
- :data:`REQUIRED_PRIVATE_API` and :data:`REQUIRED_TRL_SOURCE`: what this module relies on;
  :func:`missing_private_api` lists what the installed TRL lacks (``tests/test_trl_compat.py``
  fails on an upgrade instead of training breaking at run time);
- PPO (``trl.experimental.ppo``): :func:`ppo_helper_hooks` (the module helpers TRL's loop calls),
  :func:`ppo_updates_after` / :func:`ppo_update_range_built` (resume: TRL's loop always starts
  at update 1), :class:`PPOTrainerHooks` (its ``_save_checkpoint``), :func:`ppo_policy_state`;
- GRPO / RLOO: :class:`GRPOTrainerHooks`, :class:`RLOOTrainerHooks` (``_generate``,
  ``_generate_single_turn``, ``_get_per_token_logps_and_entropies``, ``_calculate_rewards``,
  ``_generate_and_score_completions``), :func:`uses_continuous_batching`;
- SFT: :class:`StagedCheckpointHooks` (``_save_checkpoint`` / ``_get_output_dir`` of
  transformers' ``Trainer``, as ``SFTTrainer`` inherits them);
- every TRL trainer: :func:`log_step_metric` (TRL's ``_metrics``, averaged into the next log).

This module imports no other ``cellrlhf`` module; TRL itself is imported lazily.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import torch

__all__ = [
    "SUPPORTED_TRL",
    "INSTALL_FIX",
    "UnsupportedTRLVersionError",
    "PrivateAPI",
    "TRLSource",
    "REQUIRED_PRIVATE_API",
    "REQUIRED_TRL_SOURCE",
    "installed_trl_version",
    "check_trl_version",
    "missing_private_api",
    "log_step_metric",
    "auto_bf16",
    "ppo_helper_hooks",
    "ppo_updates_after",
    "ppo_update_range_built",
    "ppo_policy_state",
    "PPOTrainerHooks",
    "GRPOTrainerHooks",
    "RLOOTrainerHooks",
    "uses_continuous_batching",
    "StagedCheckpointHooks",
]

SUPPORTED_TRL = "1.12.0"
"""The one TRL release the hooks below were written for (``pyproject.toml`` pins it)."""

INSTALL_FIX = f"pip install trl=={SUPPORTED_TRL}"

_PPO = "trl.experimental.ppo.ppo_trainer"


class UnsupportedTRLVersionError(RuntimeError):
    """The installed TRL is not the release cellrlhf's trainers hook into."""


class PrivateAPI(NamedTuple):
    """A private TRL name this module calls or overrides.

    ``owner`` is a class of ``module`` (``None``: a module-level function); ``params`` are the
    leading parameters (after ``self``) the hooks pass on, checked by name.
    """

    module: str
    owner: str | None
    name: str
    params: tuple[str, ...] = ()


class TRLSource(NamedTuple):
    """An assumption on how TRL's own code runs: ``snippet`` appears in ``owner.function``."""

    module: str
    owner: str
    function: str
    snippet: str
    why: str


_GRPO_PRIVATE = (
    ("_generate", ("prompts",)),
    ("_generate_single_turn", ("prompt_ids",)),
    ("_get_per_token_logps_and_entropies", ("model",)),
    ("_calculate_rewards", ("inputs", "prompts", "completions", "completion_ids_list")),
    ("_generate_and_score_completions", ("inputs",)),
)

REQUIRED_PRIVATE_API: list[PrivateAPI] = [
    PrivateAPI(_PPO, None, "batch_generation", ("model",)),
    PrivateAPI(_PPO, None, "get_reward", ("model",)),
    PrivateAPI(_PPO, None, "forward", ("model", "query_responses", "pad_token_id")),
    PrivateAPI(_PPO, "PPOTrainer", "train"),
    PrivateAPI(_PPO, "PPOTrainer", "_save_checkpoint", ("model", "trial")),
    *(PrivateAPI("trl", "GRPOTrainer", name, params) for name, params in _GRPO_PRIVATE),
    *(PrivateAPI("trl", "RLOOTrainer", name, params) for name, params in _GRPO_PRIVATE),
    PrivateAPI("trl", "SFTTrainer", "_save_checkpoint", ("model", "trial")),
    PrivateAPI("trl", "SFTTrainer", "_get_output_dir", ("trial",)),
]
"""Every private TRL name the hooks below use (:func:`missing_private_api` checks them)."""

REQUIRED_TRL_SOURCE: list[TRLSource] = [
    TRLSource(_PPO, "PPOTrainer", "train", "dataloader = self.dataloader",
              "the loop draws its batches from trainer.dataloader (early stop, prompt replay)"),
    TRLSource(_PPO, "PPOTrainer", "train", "self.state.global_step = 0",
              "train resets the state before on_train_begin (resume restores it there)"),
    TRLSource(_PPO, "PPOTrainer", "train", "for update in range(1, args.num_total_batches + 1):",
              "the update range is read from args.num_total_batches (resume shortens it)"),
    TRLSource(_PPO, "PPOTrainer", "train", "self._save_checkpoint(model, trial=None)",
              "checkpoints are written through _save_checkpoint (PPOTrainerHooks)"),
    TRLSource(_PPO, "PPOTrainer", "__init__", "self.train_dataset_len = len(train_dataset)",
              "the run signature of a PPO checkpoint counts the training prompts"),
    TRLSource(_PPO, "PolicyAndValueWrapper", "__init__", "self.policy = policy",
              "the policy is the wrapper's 'policy' (its state keys start with 'policy.')"),
    TRLSource(_PPO, "PolicyAndValueWrapper", "__init__", "self.value_model = value_model",
              "the value model is the wrapper's 'value_model'"),
    TRLSource("trl", "GRPOTrainer", "_generate",
              "return prompt_ids, completion_ids, tool_mask, completions,",
              "GRPOTrainerHooks rewrites item 3 (completions) of _generate's tuple"),
    TRLSource("trl", "RLOOTrainer", "_generate", "return prompt_ids, completion_ids, completions",
              "RLOOTrainerHooks rewrites item 2 (completions) of _generate's tuple"),
    *(TRLSource("trl", owner, "__init__", 'self._metrics = {"train": defaultdict(list),',
                "log_step_metric appends to _metrics[mode][name]")
      for owner in ("GRPOTrainer", "RLOOTrainer", "SFTTrainer")),
    TRLSource("trl", "SFTTrainer", "_save_checkpoint", "super()._save_checkpoint(model, trial)",
              "SFTTrainer's checkpoint is transformers' (StagedCheckpointHooks wraps it)"),
    TRLSource("transformers", "Trainer", "_save_checkpoint",
              "run_dir = self._get_output_dir(trial=trial)",
              "StagedCheckpointHooks redirects the checkpoint through _get_output_dir"),
    TRLSource("transformers", "Trainer", "_save_checkpoint",
              "save_total_limit=self.args.save_total_limit",
              "rotation follows args.save_total_limit (StagedCheckpointHooks turns it off)"),
]  # fmt: skip
"""Assumptions on the code of TRL (and of the transformers ``Trainer`` under it) that the hooks
rely on: whitespace-insensitive source snippets."""


# ---------------------------------------------------------------------- version and API checks
def installed_trl_version() -> str:
    """The version string of the installed ``trl`` package."""
    import trl

    return str(trl.__version__)


def check_trl_version(installed: str | None = None) -> None:
    """Raise :class:`UnsupportedTRLVersionError` unless TRL is :data:`SUPPORTED_TRL`.

    Parameters
    ----------
    installed
        The version to check (default: :func:`installed_trl_version`).
    """
    from packaging.version import InvalidVersion, Version

    installed = installed_trl_version() if installed is None else installed
    try:
        supported = Version(installed) == Version(SUPPORTED_TRL)
    except InvalidVersion:
        supported = False
    if not supported:
        raise UnsupportedTRLVersionError(
            f"cellrlhf's trainers need TRL {SUPPORTED_TRL}, but TRL {installed} is installed: "
            f"they hook into TRL internals that change between releases (cellrlhf.trl_compat). "
            f"Fix: `{INSTALL_FIX}`."
        )


def _resolve(module: str, owner: str | None, name: str):
    target = importlib.import_module(module)
    if owner is not None:
        target = getattr(target, owner)
    return getattr(target, name)


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def missing_private_api(
    api: list[PrivateAPI] | None = None, source: list[TRLSource] | None = None
) -> list[str]:
    """What the installed TRL lacks of :data:`REQUIRED_PRIVATE_API` and :data:`REQUIRED_TRL_SOURCE`.

    Returns
    -------
    list[str]
        One line per missing name, changed signature or changed source assumption (empty: all
        present).
    """
    api = REQUIRED_PRIVATE_API if api is None else api
    source = REQUIRED_TRL_SOURCE if source is None else source
    problems = []
    for entry in api:
        where = ".".join(p for p in (entry.module, entry.owner, entry.name) if p)
        try:
            function = _resolve(entry.module, entry.owner, entry.name)
        except (ImportError, AttributeError) as err:
            problems.append(f"{where} is missing ({err})")
            continue
        if entry.params:
            params = [p for p in inspect.signature(function).parameters if p != "self"]
            if tuple(params[: len(entry.params)]) != entry.params:
                problems.append(f"{where} takes {params}, not {list(entry.params)} first")
    for entry in source:
        where = f"{entry.module}.{entry.owner}.{entry.function}"
        try:
            text = inspect.getsource(_resolve(entry.module, entry.owner, entry.function))
        except (ImportError, AttributeError, OSError, TypeError) as err:
            problems.append(f"{where} cannot be read ({err})")
            continue
        if _squash(entry.snippet) not in _squash(text):
            problems.append(f"{where} no longer contains {entry.snippet!r}: {entry.why}")
    return problems


# ---------------------------------------------------------------------- every trainer
def log_step_metric(trainer, name: str, value: float) -> None:
    """Add ``value`` to the trainer's metrics, averaged into its next train (or eval) log line."""
    mode = "train" if trainer.model.training else "eval"
    trainer._metrics[mode][name].append(value)


def auto_bf16(config) -> None:
    """TRL turns bf16 on whenever it is unset; cellrlhf only where a CUDA device is present.

    Call in a training config's ``__post_init__`` before TRL's own.
    """
    if config.bf16 is None and not config.fp16:
        config.bf16 = torch.cuda.is_available()


# ---------------------------------------------------------------------- PPO
@contextmanager
def ppo_helper_hooks(trainer):
    """Route the helpers TRL's PPO loop calls through ``trainer``'s hooks while the block runs.

    TRL 1.12's ``PPOTrainer.train`` is one method; it calls the module-level functions
    ``batch_generation`` (rollouts), ``get_reward`` (reward and value model) and ``forward``
    (reference log-probs without gradients; the policy in the PPO update with them). They are
    replaced for the duration of the block and restored after. ``trainer`` provides

    - ``timed_phase(name)``: a context manager around ``"generation"``, ``"reward"``,
      ``"value"`` and ``"logprobs"`` (the reference forward);
    - ``generation_context(model)``: a context manager in which ``model`` samples rollouts;
    - ``policy_logits(ids, logits)``: the logits every log-probability is read from (``ids``:
      the query-response tokens);
    - ``reward_model``: told apart from the value model in ``get_reward``.
    """
    module = importlib.import_module(_PPO)
    names = ("batch_generation", "get_reward", "forward")
    originals = {name: getattr(module, name) for name in names}

    def batch_generation(model, *args, **kwargs):
        with trainer.timed_phase("generation"), trainer.generation_context(model):
            return originals["batch_generation"](model, *args, **kwargs)

    def get_reward(model, *args, **kwargs):
        phase = "reward" if model is trainer.reward_model else "value"
        with trainer.timed_phase(phase):
            return originals["get_reward"](model, *args, **kwargs)

    def forward(model, *args, **kwargs):
        # without gradients: the reference log-probs of the rollout; with: the PPO update
        phase = trainer.timed_phase("logprobs") if not torch.is_grad_enabled() else nullcontext()
        with phase:
            output = originals["forward"](model, *args, **kwargs)
        ids = kwargs.get("query_responses", args[0] if args else None)
        policy_output = output[0] if isinstance(output, tuple) else output  # (policy, value)
        policy_output.logits = trainer.policy_logits(ids, policy_output.logits)
        return output

    replacements = {"batch_generation": batch_generation, "get_reward": get_reward}
    replacements["forward"] = forward
    for name, function in replacements.items():
        setattr(module, name, function)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(module, name, original)


@contextmanager
def ppo_updates_after(trainer, done: int, restore_state: Callable[[int], None]):
    """Within the block, TRL's ``PPOTrainer.train`` runs the updates after ``done`` only.

    TRL 1.12's loop always runs updates ``1..args.num_total_batches`` and resets the trainer
    state before ``on_train_begin``: the count is shortened by ``done`` until the loop has built
    its range (call :func:`ppo_update_range_built` when it draws its first batch), and
    ``restore_state(total_updates)`` runs right after TRL's reset, before every callback's
    ``on_train_begin``.
    """
    args, handler = trainer.args, trainer.callback_handler
    total = args.num_total_batches
    on_train_begin = handler.on_train_begin

    def restored_on_train_begin(args_, state, control):
        restore_state(total)
        return on_train_begin(args_, state, control)

    args.num_total_batches = total - done  # TRL's range(1, num_total_batches + 1)
    handler.on_train_begin = restored_on_train_begin
    try:
        yield
    finally:
        args.num_total_batches = total
        del handler.on_train_begin


def ppo_update_range_built(trainer) -> None:
    """TRL has built its update range: the arguments hold the run's full count again."""
    trainer.args.num_total_batches = trainer.state.max_steps


def ppo_policy_state(state_dict: dict) -> dict:
    """The policy's entries of TRL's ``PolicyAndValueWrapper`` state dict, prefix removed."""
    prefix = "policy."
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


class PPOTrainerHooks:
    """Mixin over TRL 1.12's ``PPOTrainer``: its loop saves through ``_save_checkpoint``.

    The trainer provides ``save_resumable_checkpoint()``, which replaces TRL's checkpoint
    (model card and transformers' checkpoint) entirely.
    """

    def _save_checkpoint(self, model, trial):
        self.save_resumable_checkpoint()


# ---------------------------------------------------------------------- GRPO / RLOO
class _OnlineRLHooks:
    """Mixin over TRL 1.12's ``GRPOTrainer`` / ``RLOOTrainer``: private steps routed to hooks.

    The trainer provides

    - ``timed_phase(name)``: a context manager around ``"generation"`` (``_generate``),
      ``"reward"`` (``_calculate_rewards``) and ``"logprobs"`` (the rest of
      ``_generate_and_score_completions``);
    - ``completion_texts(completion_ids)``: the completion texts handed to the reward functions
      (TRL's own are decoded with ``skip_special_tokens=True``);
    - ``generation_context(policy)``: a context manager in which the unwrapped policy samples;
    - ``scoring_model(model)``: the model TRL reads every log-probability's logits from.
    """

    _completions_index: int  # where ``_generate``'s tuple holds the completions

    def _generate(self, prompts):
        with self.timed_phase("generation"):
            result = list(super()._generate(prompts))
        completion_ids = result[1]
        index = self._completions_index
        texts = self.completion_texts(completion_ids)
        result[index] = [
            [{"role": "assistant", "content": text}] if isinstance(completion, list) else text
            for completion, text in zip(result[index], texts, strict=True)
        ]
        return tuple(result)

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        policy = self.accelerator.unwrap_model(self.model_wrapped)
        with self.generation_context(policy):
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        model = self.scoring_model(model)
        return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        with self.timed_phase("reward"):
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def _generate_and_score_completions(self, inputs):
        with self.timed_phase("logprobs"):
            return super()._generate_and_score_completions(inputs)


class GRPOTrainerHooks(_OnlineRLHooks):
    """:class:`_OnlineRLHooks` for ``GRPOTrainer``."""

    # _generate returns (prompt_ids, completion_ids, tool_mask, completions, ...)
    _completions_index = 3


class RLOOTrainerHooks(_OnlineRLHooks):
    """:class:`_OnlineRLHooks` for ``RLOOTrainer``."""

    # _generate returns (prompt_ids, completion_ids, completions)
    _completions_index = 2


def uses_continuous_batching(trainer) -> bool:
    """Whether a GRPO / RLOO trainer samples with transformers' continuous batching."""
    return bool(getattr(trainer, "use_transformers_continuous_batching", False))


# ---------------------------------------------------------------------- SFT (transformers Trainer)
class StagedCheckpointHooks:
    """Mixin over ``SFTTrainer``: ``checkpoint-N`` is written into a staging folder first.

    transformers' ``_save_checkpoint`` writes under ``_get_output_dir`` and rotates old
    checkpoints when ``save_total_limit`` is set: here it writes into
    ``<run_dir>/<checkpoint_staging_dirname>/checkpoint-N`` without rotating, then calls the
    trainer's ``publish_staged_checkpoint(staged, final, run_dir, save_total_limit)``.
    """

    checkpoint_staging_dirname: str
    _checkpoint_root: str | None = None

    def _get_output_dir(self, trial) -> str:
        if self._checkpoint_root is not None:
            return self._checkpoint_root
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, self.checkpoint_staging_dirname)
        limit = self.args.save_total_limit
        self._checkpoint_root, self.args.save_total_limit = staging_root, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_root, self.args.save_total_limit = None, limit
        staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        self.publish_staged_checkpoint(staged, final, run_dir, limit)
