"""SFT model -> reward model -> PPO, in-process, a few steps on the tiny data set."""

import json
import math

import pytest
import torch
from ppo_test_support import PPO_TINY, rl_args
from safetensors.torch import load_file
from tiny_rl_data import prompt

from cellrlhf.ppo.model_selection import FIDELITY_KEY
from cellrlhf.ppo.phase_timing import PHASES


def run_ppo(out, rl_dataset_dir, sft_model_dir, reward_model_dir, *extra):
    from cellrlhf.ppo.ppo import build_run, make_parser
    from cellrlhf.ppo.rl_run import finish_run

    args = rl_args(
        PPO_TINY,
        make_parser=make_parser(),
        dataset=rl_dataset_dir,
        sft=sft_model_dir,
        out=out,
        extra=["--reward_model_path", reward_model_dir, *extra],
    )
    run = build_run(*args)
    before = {k: v.detach().clone() for k, v in run.trainer.policy_model.state_dict().items()}
    run.trainer.train()
    summary = finish_run(run)
    return run, summary, before


@pytest.fixture(scope="module")
def ppo(tmp_path_factory, rl_dataset_dir, sft_model_dir, reward_model_dir):
    out = tmp_path_factory.mktemp("ppo") / "run"
    run, summary, before = run_ppo(
        out, rl_dataset_dir, sft_model_dir, reward_model_dir, "--heldout_every_steps", "1"
    )
    return run, summary, before, out


def train_logs(run):
    return [row for row in run.trainer.state.log_history if "objective/scores" in row]


def test_rewards_are_finite_and_kl_is_logged(ppo):
    run, *_ = ppo
    rows = train_logs(run)
    assert len(rows) == run.trainer.state.global_step == 4
    for row in rows:
        assert math.isfinite(row["objective/scores"])
        assert math.isfinite(row["objective/kl"])
    heldout = [row for row in run.trainer.state.log_history if "heldout/kl" in row]
    assert [row["step"] for row in heldout] == [0, 1, 2, 3, 4]
    assert heldout[0]["heldout/kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
    assert all(math.isfinite(row["heldout/kl"]) for row in heldout)
    assert all(math.isfinite(row["heldout/learned_reward"]) for row in heldout)


def test_policy_moves_and_reference_stays(ppo, sft_model_dir):
    run, _, before, _ = ppo
    sft = load_file(str(sft_model_dir / "model.safetensors"))
    after = run.trainer.policy_model.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before)
    reference = run.trainer.ref_model.state_dict()
    for name, value in sft.items():
        assert torch.equal(reference[name], value), name


def test_every_step_is_timed_by_phase(ppo):
    run, summary, *_ = ppo
    for row in train_logs(run):
        phases = [
            row[f"timing/{p}_s"] for p in ("generation", "reward", "value", "logprobs", "update")
        ]
        assert all(t >= 0 for t in phases)
        assert sum(phases) == pytest.approx(row["timing/step_s"], rel=1e-6)
    assert len(run.trainer.phase_timer.history) == 4
    assert set(summary["timing"]) >= {"step_s", "reward_fraction", "generation_fraction"}
    assert set(k.removesuffix("_s") for k in summary["timing"] if k.endswith("_s")) <= {
        "step",
        *PHASES,
    }


def test_kept_policy_is_the_best_heldout_fidelity(ppo, sft_model_dir):
    run, summary, _, out = ppo
    history = json.loads((out / "heldout_eval_history.json").read_text())
    evaluations = history["evaluations"]
    eligible = [e for e in evaluations if e["decision"]["eligible"]]
    best = max(e["metrics"][FIDELITY_KEY] for e in eligible)
    first_best = min(e["step"] for e in eligible if e["metrics"][FIDELITY_KEY] == best)
    assert summary["selected_step"] == first_best == history["selection"]["best_step"]
    info = json.loads((out / "cellrlhf.json").read_text())
    assert info["stage"] == "ppo" and info["selected_step"] == first_best
    assert info["selection"]["heldout"][FIDELITY_KEY] == pytest.approx(best)

    kept = load_file(str(out / "model.safetensors"))
    sft = load_file(str(sft_model_dir / "model.safetensors"))
    live = {k: v for k, v in run.trainer.policy_model.state_dict().items() if k in kept}
    if first_best == 0:
        assert all(torch.equal(kept[k], sft[k]) for k in sft)
    else:
        assert any(not torch.equal(kept[k], sft[k]) for k in sft)
    if first_best != summary["last_step"]:
        last = load_file(str(out / "last" / "model.safetensors"))
        assert all(torch.equal(last[k], live[k]) for k in last)
    else:
        assert not (out / "last").exists()
        assert all(torch.equal(kept[k], live[k]) for k in kept)
    assert not (out / "best").exists()


def test_saved_policy_reloads_and_generates(ppo):
    from cellrlhf.ppo.prompt_tokenization import prompt_token_ids
    from cellrlhf.sft.model_dir import load_cell_model

    *_, out = ppo
    for name in (
        "gene_vocab.json",
        "expression_decoder.json",
        "data_manifest.json",
        "training_config.yaml",
        "heldout_eval_history.json",
        "heldout_eval.png",
        "phase_timing.json",
        "chat_template.jinja",
    ):
        assert (out / name).is_file(), name
    model, tokenizer, info = load_cell_model(out)
    assert info["sft_model"] and info["reward_model"]
    ids = torch.tensor([prompt_token_ids(tokenizer, prompt("FOS"))])
    generated = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > ids.shape[1]


def test_lora_policy_uses_disabled_adapters_as_reference(
    tmp_path, rl_dataset_dir, sft_model_dir, reward_model_dir
):
    run, summary, _ = run_ppo(
        tmp_path / "lora",
        rl_dataset_dir,
        sft_model_dir,
        reward_model_dir,
        "--use_peft",
        "--lora_r",
        "4",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "--total_episodes",
        "4",
        "--heldout_every_steps",
        "1",
        "--select_best",
        "false",
    )
    assert run.trainer.ref_model is None and run.trainer.is_peft_model
    heldout = [row for row in run.trainer.state.log_history if "heldout/kl" in row]
    assert heldout[0]["heldout/kl"] == pytest.approx(0.0, abs=1e-6)
    saved = load_file(str(tmp_path / "lora" / "model.safetensors"))
    sft = load_file(str(sft_model_dir / "model.safetensors"))
    assert set(saved) == set(sft)  # adapters merged: a plain full-weight model
    assert not (tmp_path / "lora" / "adapter_config.json").exists()
    assert summary["selected_step"] == summary["last_step"] == 2


def test_early_stopping_ends_ppo_before_its_last_step(
    tmp_path, rl_dataset_dir, sft_model_dir, reward_model_dir
):
    run, summary, _ = run_ppo(
        tmp_path / "stop",
        rl_dataset_dir,
        sft_model_dir,
        reward_model_dir,
        "--heldout_every_steps",
        "1",
        "--early_stopping_patience",
        "1",
        "--early_stopping_min_delta",
        "2.0",  # no evaluation can beat step 0 by more than 2: stop at the first one
    )
    assert run.trainer.state.global_step == 1
    assert [h["step"] for h in run.monitor.history] == [0, 1]
    assert run.monitor.history[-1]["decision"]["should_stop"]
    assert summary["selected_step"] == 0
    kept = load_file(str(tmp_path / "stop" / "model.safetensors"))
    sft = load_file(str(sft_model_dir / "model.safetensors"))
    assert all(torch.equal(kept[k], sft[k]) for k in sft)


def test_too_few_prompts_for_the_batch_is_refused(
    tmp_path, rl_dataset_dir, sft_model_dir, reward_model_dir
):
    from cellrlhf.ppo.ppo import build_run, make_parser

    args = rl_args(
        PPO_TINY,
        make_parser=make_parser(),
        dataset=rl_dataset_dir,
        sft=sft_model_dir,
        out=tmp_path / "x",
        extra=["--reward_model_path", reward_model_dir, "--per_device_train_batch_size", "8"],
    )
    with pytest.raises(ValueError, match="cannot fill one PPO batch"):
        build_run(*args)


def test_constrained_ppo_samples_and_scores_the_constrained_policy(
    tmp_path, rl_dataset_dir, sft_model_dir, reward_model_dir
):
    """constrain_cells in PPO: the first step's KL is 0 (rollout log-probs from generate's masked
    scores, reference log-probs from the masked forward: the same distribution), the policy
    trains, and every answer the monitor samples is one valid cell."""
    out = tmp_path / "constrained"
    run, summary, before = run_ppo(
        out, rl_dataset_dir, sft_model_dir, reward_model_dir,
        "--constrain_cells", "true", "--heldout_every_steps", "2",
    )  # fmt: skip
    assert run.trainer.cell_constraint is not None
    rows = train_logs(run)
    assert rows and all(math.isfinite(row["loss/policy_avg"]) for row in rows)
    assert rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-3)
    after = run.trainer.policy_model.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before)
    heldout = [row for row in run.trainer.state.log_history if "heldout/kl" in row]
    assert heldout and all(row["heldout/fully_valid_fraction"] == 1.0 for row in heldout)
    assert json.loads((out / "cellrlhf.json").read_text())["constrain_cells"] is True
