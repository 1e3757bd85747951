"""cellrlhf.trl_compat: the TRL version check, the private API it relies on, and its hooks.

An upgrade of TRL fails here (version, missing private name, changed signature or loop) instead
of breaking a training run.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
import trl

from cellrlhf import trl_compat
from cellrlhf.trl_compat import (
    INSTALL_FIX,
    REQUIRED_PRIVATE_API,
    SUPPORTED_TRL,
    GRPOTrainerHooks,
    PPOTrainerHooks,
    PrivateAPI,
    RLOOTrainerHooks,
    StagedCheckpointHooks,
    TRLSource,
    UnsupportedTRLVersionError,
    check_trl_version,
    log_step_metric,
    missing_private_api,
    ppo_helper_hooks,
    ppo_policy_state,
    ppo_update_range_built,
    ppo_updates_after,
)

PPO_MODULE = "trl.experimental.ppo.ppo_trainer"


# ---------------------------------------------------------------------- version check
def test_installed_trl_is_the_supported_one():
    assert trl.__version__ == SUPPORTED_TRL
    check_trl_version()  # no error
    check_trl_version("1.12")  # the same release, spelled short


@pytest.mark.parametrize("version", ["1.13.0", "0.9.0", "1.12.1", "not-a-version"])
def test_other_trl_versions_raise_one_clear_error(monkeypatch, version):
    monkeypatch.setattr(trl, "__version__", version)
    with pytest.raises(UnsupportedTRLVersionError) as err:
        check_trl_version()
    message = str(err.value)
    assert f"TRL {version} is installed" in message
    assert f"need TRL {SUPPORTED_TRL}" in message
    assert "pip install trl==1.12.0" in message and INSTALL_FIX == "pip install trl==1.12.0"


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("cellrlhf.sft.trainer", "CellSFTTrainer"),
        ("cellrlhf.ppo.ppo_trainer", "CellPPOTrainer"),
        ("cellrlhf.ppo.grpo_trainer", "CellGRPOTrainer"),
        ("cellrlhf.ppo.grpo_trainer", "CellRLOOTrainer"),
    ],
)
def test_every_trainer_checks_the_version_before_building(monkeypatch, module, name):
    import importlib

    trainer_class = getattr(importlib.import_module(module), name)
    monkeypatch.setattr(trl, "__version__", "1.13.0")
    with pytest.raises(UnsupportedTRLVersionError, match="pip install trl==1.12.0"):
        trainer_class()  # raised before TRL would complain about the missing arguments


# ---------------------------------------------------------------------- private API present
def test_every_private_trl_name_the_hooks_use_exists_on_the_installed_trl():
    assert missing_private_api() == []


def test_the_private_api_list_covers_every_private_method_the_hook_mixins_override():
    listed = {(entry.owner, entry.name) for entry in REQUIRED_PRIVATE_API}
    for mixin, owners in (
        (GRPOTrainerHooks, ("GRPOTrainer", "RLOOTrainer")),
        (PPOTrainerHooks, ("PPOTrainer",)),
        (StagedCheckpointHooks, ("SFTTrainer",)),
    ):
        overridden = {
            name
            for klass in inspect.getmro(mixin)
            if klass.__module__ == trl_compat.__name__
            for name, value in vars(klass).items()
            if name.startswith("_") and not name.startswith("__") and callable(value)
        }
        assert overridden, mixin
        for owner in owners:
            assert {(owner, name) for name in overridden} <= listed, (mixin, owner)


def test_a_missing_name_a_changed_signature_and_a_changed_loop_are_reported():
    api = [
        PrivateAPI("trl", "GRPOTrainer", "_no_such_method"),
        PrivateAPI("trl.no_such_module", None, "forward"),
        PrivateAPI(PPO_MODULE, None, "forward", ("model", "input_ids")),
        PrivateAPI(PPO_MODULE, None, "forward", ("model", "query_responses")),  # fine
    ]
    source = [
        TRLSource(PPO_MODULE, "PPOTrainer", "train", "for update in range(0, 9):", "resume"),
        TRLSource(PPO_MODULE, "PPOTrainer", "train", "for update  in range(1,", "fine"),
    ]
    problems = missing_private_api(api, source)
    assert len(problems) == 4, problems
    assert problems[0].startswith("trl.GRPOTrainer._no_such_method is missing")
    assert problems[1].startswith("trl.no_such_module.forward is missing")
    assert "not ['model', 'input_ids'] first" in problems[2]
    assert "no longer contains 'for update in range(0, 9):': resume" in problems[3]


def test_a_private_name_removed_by_an_upgrade_fails_the_check(monkeypatch):
    from trl.experimental.ppo import ppo_trainer

    monkeypatch.delattr(ppo_trainer, "get_reward")
    assert missing_private_api() == [f"{PPO_MODULE}.get_reward is missing " + _no_attr()]


def _no_attr() -> str:
    return f"(module '{PPO_MODULE}' has no attribute 'get_reward')"


# ---------------------------------------------------------------------- hooks
def test_log_step_metric_goes_to_the_mode_of_the_model():
    from collections import defaultdict

    trainer = SimpleNamespace(
        model=torch.nn.Linear(1, 1),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    log_step_metric(trainer, "x", 1.5)
    trainer.model.eval()
    log_step_metric(trainer, "x", 2.0)
    assert trainer._metrics == {"train": {"x": [1.5]}, "eval": {"x": [2.0]}}


def test_ppo_policy_state_keeps_the_policy_entries_without_prefix():
    state = {"policy.a": 1, "value_model.b": 2, "policy.c.d": 3, "x.policy.e": 4}
    assert ppo_policy_state(state) == {"a": 1, "c.d": 3}


class _HookRecorder:
    """A trainer with the hooks ppo_helper_hooks calls, recording what happens."""

    def __init__(self):
        self.reward_model = object()
        self.events = []

    @contextmanager
    def timed_phase(self, name):
        self.events.append(("phase", name))
        yield

    @contextmanager
    def generation_context(self, model):
        self.events.append(("generation_context", model))
        yield

    def policy_logits(self, ids, logits):
        self.events.append(("policy_logits", ids))
        return logits + 100


def test_ppo_helper_hooks_route_the_trl_helpers_and_restore_them(monkeypatch):
    from trl.experimental.ppo import ppo_trainer as module

    calls = []
    monkeypatch.setattr(module, "batch_generation", lambda m, *a: calls.append(("gen", m)) or "q")
    monkeypatch.setattr(module, "get_reward", lambda m, *a: calls.append(("score", m)) or "s")
    output = SimpleNamespace(logits=torch.zeros(1))
    monkeypatch.setattr(module, "forward", lambda m, ids, pad: (output, "value") if m else output)
    originals = (module.batch_generation, module.get_reward, module.forward)
    trainer = _HookRecorder()
    with ppo_helper_hooks(trainer):
        assert module.batch_generation("policy", "queries") == "q"
        assert module.get_reward(trainer.reward_model) == "s"
        assert module.get_reward("value model") == "s"
        with torch.no_grad():
            assert module.forward(None, "ids", 0) is output  # reference: timed, logits hooked
        assert module.forward("policy", "ids2", 0) == (output, "value")  # update: not timed
    assert (module.batch_generation, module.get_reward, module.forward) == originals
    assert calls == [("gen", "policy"), ("score", trainer.reward_model), ("score", "value model")]
    assert trainer.events == [
        ("phase", "generation"),
        ("generation_context", "policy"),
        ("phase", "reward"),
        ("phase", "value"),
        ("phase", "logprobs"),
        ("policy_logits", "ids"),
        ("policy_logits", "ids2"),
    ]
    assert output.logits.tolist() == [200.0]


def test_ppo_helper_hooks_restore_the_helpers_after_an_error():
    from trl.experimental.ppo import ppo_trainer as module

    original = module.forward
    with pytest.raises(KeyError), ppo_helper_hooks(_HookRecorder()):
        assert module.forward is not original
        raise KeyError
    assert module.forward is original


class _Handler:
    def __init__(self):
        self.calls = []

    def on_train_begin(self, args, state, control):
        self.calls.append(("callbacks", args.num_total_batches))
        return "control"


def test_ppo_updates_after_shortens_the_loop_and_restores_the_state_first():
    trainer = SimpleNamespace(
        args=SimpleNamespace(num_total_batches=10),
        callback_handler=_Handler(),
        state=SimpleNamespace(max_steps=10),
    )
    handler = trainer.callback_handler
    with ppo_updates_after(trainer, 3, lambda total: handler.calls.append(("restore", total))):
        assert trainer.args.num_total_batches == 7  # TRL builds range(1, 8)
        assert handler.on_train_begin(trainer.args, None, None) == "control"
        ppo_update_range_built(trainer)
        assert trainer.args.num_total_batches == 10
    assert handler.calls == [("restore", 10), ("callbacks", 7)]
    assert trainer.args.num_total_batches == 10
    assert "on_train_begin" not in vars(handler)  # the class's own method again


class _FakeSaver:
    """transformers' Trainer as far as StagedCheckpointHooks sees it."""

    def __init__(self, fail=False):
        self.args = SimpleNamespace(save_total_limit=2)
        self.state = SimpleNamespace(global_step=5)
        self.fail = fail
        self.saved = []

    def _get_output_dir(self, trial):
        return "/run"

    def _save_checkpoint(self, model, trial):
        self.saved.append((self._get_output_dir(trial), self.args.save_total_limit))
        if self.fail:
            raise OSError("disk full")


class _Staged(StagedCheckpointHooks, _FakeSaver):
    checkpoint_staging_dirname = ".staging"

    def publish_staged_checkpoint(self, staged, final, run_dir, save_total_limit):
        self.published = (staged, final, run_dir, save_total_limit)


def test_staged_checkpoints_are_written_unrotated_into_staging_then_published():
    trainer = _Staged()
    trainer._save_checkpoint(None, None)
    assert trainer.saved == [("/run/.staging", None)]
    assert trainer.published == ("/run/.staging/checkpoint-5", "/run/checkpoint-5", "/run", 2)
    assert trainer.args.save_total_limit == 2 and trainer._get_output_dir(None) == "/run"


def test_staged_checkpoints_restore_the_trainer_when_saving_fails():
    trainer = _Staged(fail=True)
    with pytest.raises(OSError, match="disk full"):
        trainer._save_checkpoint(None, None)
    assert trainer.args.save_total_limit == 2 and trainer._get_output_dir(None) == "/run"
    assert not hasattr(trainer, "published")


class _FakeGenerator:
    def _generate(self, prompts):
        conversational = [[{"role": "assistant", "content": "x"}], [{"role": "assistant"}]]
        completions = conversational if prompts == "chat" else ["x", "y"]
        if self._completions_index == 3:
            return ("prompt_ids", [[1], [2]], "tool_mask", completions, "logprobs")
        return ("prompt_ids", [[1], [2]], completions)

    @contextmanager
    def timed_phase(self, name):
        self.phases.append(name)
        yield

    def completion_texts(self, completion_ids):
        return [f"<cell> {ids[0]} </cell>" for ids in completion_ids]


@pytest.mark.parametrize("hooks", [GRPOTrainerHooks, RLOOTrainerHooks])
def test_generated_completions_are_replaced_by_the_trainers_texts(hooks):
    trainer = type("Trainer", (hooks, _FakeGenerator), {})()
    trainer.phases = []
    text = trainer._generate("text")
    chat = trainer._generate("chat")
    index = hooks._completions_index
    assert text[index] == ["<cell> 1 </cell>", "<cell> 2 </cell>"]
    assert chat[index] == [
        [{"role": "assistant", "content": "<cell> 1 </cell>"}],
        [{"role": "assistant", "content": "<cell> 2 </cell>"}],
    ]
    assert text[:index] == ("prompt_ids", [[1], [2]], "tool_mask")[:index]
    assert trainer.phases == ["generation", "generation"]
