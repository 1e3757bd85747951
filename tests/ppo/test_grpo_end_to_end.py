"""SFT model -> GRPO with the programmatic fidelity reward, and RLOO with a mixed reward."""

import json
import math

import pytest
import torch
from ppo_test_support import GRPO_TINY, rl_args
from safetensors.torch import load_file

from cellrlhf.ppo.model_selection import FIDELITY_KEY, SPECIFIC_KEY


def run_rl(out, rl_dataset_dir, sft_model_dir, *extra):
    from cellrlhf.ppo.grpo import build_run, make_parser, trainer_choice
    from cellrlhf.ppo.rl_run import finish_run

    parser = make_parser(trainer_choice(list(map(str, extra))))
    args = rl_args(
        GRPO_TINY,
        make_parser=parser,
        dataset=rl_dataset_dir,
        sft=sft_model_dir,
        out=out,
        extra=extra,
    )
    run = build_run(*args)
    before = {k: v.detach().clone() for k, v in run.trainer.model.state_dict().items()}
    run.trainer.train()
    return run, finish_run(run), before


def train_logs(run):
    return [row for row in run.trainer.state.log_history if "reward" in row and "loss" in row]


@pytest.fixture(scope="module")
def grpo(tmp_path_factory, rl_dataset_dir, sft_model_dir):
    out = tmp_path_factory.mktemp("grpo") / "run"
    # the unconstrained policy (configs/ppo/grpo_tiny.yaml constrains, as the demo's GRPO)
    run, summary, before = run_rl(out, rl_dataset_dir, sft_model_dir, "--constrain_cells", "false")
    return run, summary, before, out


def test_fidelity_rewards_are_finite_and_logged_with_kl(grpo):
    run, *_ = grpo
    rows = train_logs(run)
    assert len(rows) == 4
    for row in rows:
        assert math.isfinite(row["reward"]) and math.isfinite(row["kl"])
        assert math.isfinite(row["rewards/group_fidelity/mean"])
        assert 0 < row["group_fidelity/distinct_fraction"] <= 1
    heldout = [row for row in run.trainer.state.log_history if "heldout/kl" in row]
    assert [row["step"] for row in heldout] == [0, 2, 4]
    assert heldout[0]["heldout/kl"] == pytest.approx(0.0, abs=1e-6)


def test_rewards_read_the_cell_markup(grpo):
    run, *_ = grpo
    reward = run.trainer.reward_funcs[0]
    breakdown = reward.last_breakdown
    assert breakdown is not None and len(breakdown.reward) == 8
    # completions reach the reward with their <cell> markup, so unclosed cells are visible
    assert any(row.get("group_fidelity/unclosed_fraction") is not None for row in train_logs(run))


def test_policy_moves_and_reference_stays(grpo, sft_model_dir):
    run, _, before, _ = grpo
    after = run.trainer.model.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before)
    sft = load_file(str(sft_model_dir / "model.safetensors"))
    reference = run.trainer.ref_model.state_dict()
    assert all(torch.equal(reference[k], v) for k, v in sft.items())


def test_phases_add_up_and_reward_is_timed(grpo):
    run, summary, *_ = grpo
    for record in run.trainer.phase_timer.history:
        phases = sum(v for k, v in record.items() if k not in {"step", "total"})
        assert phases == pytest.approx(record["total"], rel=1e-6)
        assert record["generation"] > 0 and record["reward"] > 0 and record["update"] > 0
    assert 0 < summary["timing"]["reward_fraction"] < 1


def test_kept_policy_follows_heldout_fidelity_and_reloads(grpo):
    from cellrlhf.sft.model_dir import load_cell_model

    run, summary, _, out = grpo
    history = json.loads((out / "heldout_eval_history.json").read_text())
    eligible = [e for e in history["evaluations"] if e["decision"]["eligible"]]
    best = max(e["metrics"][FIDELITY_KEY] for e in eligible)
    assert summary["selected_step"] == min(
        e["step"] for e in eligible if e["metrics"][FIDELITY_KEY] == best
    )
    model, _, info = load_cell_model(out)
    assert info["stage"] == "grpo" and info["rewards"] == ["fidelity"]
    # the tiny data set holds out no validation perturbations: selected on test, and it says so
    assert summary["heldout_split"] == info["selection"]["heldout_split"] == "test"
    assert history["settings"]["split"] == "test"
    assert model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3).shape[1] > 3
    # no specific term in the reward: chosen on pearson_delta, pearson_specific still reported
    assert info["selection"]["metric"] == history["selection"]["metric"] == FIDELITY_KEY
    assert all(math.isfinite(e["metrics"][SPECIFIC_KEY]) for e in history["evaluations"])


def test_specific_reward_selects_on_heldout_pearson_specific(
    tmp_path, rl_dataset_dir, sft_model_dir
):
    from cellrlhf.sft.model_dir import load_model_info

    out = tmp_path / "specific"
    _, summary, _ = run_rl(
        out, rl_dataset_dir, sft_model_dir, "--specific_weight", "1.0", "--max_steps", "2"
    )
    history = json.loads((out / "heldout_eval_history.json").read_text())
    assert load_model_info(out)["selection"]["metric"] == SPECIFIC_KEY
    assert history["selection"]["metric"] == SPECIFIC_KEY
    eligible = [e for e in history["evaluations"] if e["decision"]["eligible"]]
    best = max(e["metrics"][SPECIFIC_KEY] for e in eligible)
    assert summary["selected_step"] == min(
        e["step"] for e in eligible if e["metrics"][SPECIFIC_KEY] == best
    )
    assert [e["decision"]["fidelity"] for e in history["evaluations"]] == [
        e["metrics"][SPECIFIC_KEY] for e in history["evaluations"]
    ]


def test_rloo_with_a_weighted_mix_of_rewards(
    tmp_path, rl_dataset_dir, sft_model_dir, reward_model_dir
):
    run, summary, _ = run_rl(
        tmp_path / "rloo",
        rl_dataset_dir,
        sft_model_dir,
        "--trainer",
        "rloo",
        "--rewards",
        "fidelity",
        "model",
        "--reward_weights",
        "1.0",
        "0.5",
        "--reward_model_path",
        reward_model_dir,
        "--max_steps",
        "2",
        "--beta",
        "0.0",
    )
    assert type(run.trainer).__name__ == "CellRLOOTrainer"
    rows = train_logs(run)
    assert rows
    for row in rows:
        fidelity, learned = row["rewards/group_fidelity/mean"], row["rewards/model/mean"]
        assert row["reward"] == pytest.approx(fidelity + 0.5 * learned, abs=1e-5)
    heldout = [row for row in run.trainer.state.log_history if "heldout/kl" in row]
    # beta=0: the trainer keeps no reference; the monitor's own copy of the SFT model serves
    assert run.trainer.ref_model is None
    assert heldout[0]["heldout/kl"] == pytest.approx(0.0, abs=1e-6)
    assert all(math.isfinite(row["heldout/learned_reward"]) for row in heldout)
    info = json.loads((tmp_path / "rloo" / "cellrlhf.json").read_text())
    assert info["stage"] == "rloo" and info["reward_weights"] == [1.0, 0.5]
    assert summary["last_step"] == 2


def test_constrained_policy_samples_only_valid_cells_and_logs_validity(
    tmp_path, rl_dataset_dir, sft_model_dir, grpo
):
    """constrain_cells: every cell sampled in training and by the monitor is valid; KL at the
    start is 0 (the reference is scored under the same mask)."""
    run, summary, before = run_rl(
        tmp_path / "constrained",
        rl_dataset_dir,
        sft_model_dir,
        "--constrain_cells",
        "true",
        "--max_completion_length",
        "32",
        "--max_steps",
        "2",
    )
    assert run.trainer.cell_constraint is not None
    rows = train_logs(run)
    assert len(rows) == 2
    for row in rows:
        assert math.isfinite(row["loss"]) and math.isfinite(row["kl"])
        assert row["cells/budget_hit_fraction"] == 0.0
        assert row["cells/fully_valid_fraction"] == 1.0
        assert row["group_fidelity/duplicate_fraction"] == 0.0
    assert all(math.isfinite(row["rewards/group_fidelity/mean"]) for row in rows)
    after = run.trainer.model.state_dict()  # it trains: the policy moves
    assert any(not torch.equal(after[k], before[k]) for k in before)
    heldout = [row for row in run.trainer.state.log_history if "heldout/kl" in row]
    assert heldout[0]["heldout/kl"] == pytest.approx(0.0, abs=1e-6)
    assert all(row["heldout/fully_valid_fraction"] == 1.0 for row in heldout)
    assert all(row["heldout/duplicate_fraction"] == 0.0 for row in heldout)
    info = json.loads((tmp_path / "constrained" / "cellrlhf.json").read_text())
    assert info["constrain_cells"] is True
    # the unconstrained run logs the same validity metrics (its own, below 1 or not)
    free = train_logs(grpo[0])
    assert all(0.0 <= row["cells/fully_valid_fraction"] <= 1.0 for row in free)
    assert json.loads((grpo[3] / "cellrlhf.json").read_text())["constrain_cells"] is False


def test_a_rerun_resumes_from_the_last_checkpoint_unless_told_to_start_over(
    tmp_path, rl_dataset_dir, sft_model_dir
):
    from cellrlhf.ppo.grpo import build_run, make_parser, trainer_choice
    from cellrlhf.ppo.rl_run import resume_checkpoint, train_run

    out = tmp_path / "run"
    save = ("--save_strategy", "steps", "--save_steps", "2", "--max_steps", "2")
    first, _, _ = run_rl(out, rl_dataset_dir, sft_model_dir, *save)
    assert first.trainer.state.global_step == 2

    def rerun(*extra):
        parser = make_parser(trainer_choice([]))
        args = rl_args(
            GRPO_TINY,
            make_parser=parser,
            dataset=rl_dataset_dir,
            sft=sft_model_dir,
            out=out,
            extra=(*save[:4], "--max_steps", "3", *extra),
        )
        return build_run(*args)

    assert resume_checkpoint(rerun("--overwrite_output_dir").trainer) is None
    assert resume_checkpoint(rerun("--resume_from_checkpoint", "none").trainer) is None
    run = rerun()
    assert resume_checkpoint(run.trainer) == str(out / "checkpoint-2")
    train_run(run)
    assert run.trainer.state.global_step == 3
