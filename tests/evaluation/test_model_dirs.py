"""``cellrlhf evaluate --model grpo=DIR`` also evaluates the RL run's last policy (``DIR/last``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from cellrlhf.evaluation import cli as evaluation_cli
from cellrlhf.evaluation.model_dirs import with_grammar_rows, with_last_policies


def _model(path: Path, step: int | None, **extra) -> Path:
    path.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "gene_vocab.json", "expression_decoder.json"):
        (path / name).write_text("{}")
    info = {"format": "cellrlhf.model", "stage": "grpo", "selected_step": step, **extra}
    (path / "cellrlhf.json").write_text(json.dumps(info))
    return path


def test_a_different_last_policy_follows_its_kept_one(tmp_path):
    grpo = _model(tmp_path / "grpo", 20)
    _model(grpo / "last", 60)
    sft = _model(tmp_path / "sft", None)
    models = {"sft": str(sft), "grpo": str(grpo), "ppo": str(tmp_path / "not_run")}
    got = with_last_policies(models)
    assert list(got) == ["sft", "grpo", "grpo_last", "ppo"]
    assert got["grpo_last"] == grpo / "last" and got["ppo"] == str(tmp_path / "not_run")


def test_a_last_policy_that_is_the_kept_one_is_the_kept_directory(tmp_path):
    # RL kept its last policy: no last/ (or a stale copy of the kept one); the last policy's
    # row is the kept policy's, so every run of a sweep has one (sampled once, see evaluate)
    kept_last = _model(tmp_path / "kept_last", 60)
    stale = _model(tmp_path / "stale", 60)
    _model(stale / "last", 60)
    sft = _model(tmp_path / "sft", None)
    sft_info = {"format": "cellrlhf.model", "stage": "sft"}
    (sft / "cellrlhf.json").write_text(json.dumps(sft_info))
    models = {"sft": sft, "kept_last": kept_last, "stale": stale}
    assert with_last_policies(models) == {
        "sft": sft,
        "kept_last": kept_last,
        "kept_last_last": kept_last,
        "stale": stale,
        "stale_last": stale,
    }


def test_an_incomplete_or_named_last_policy_is_not_added(tmp_path, caplog):
    broken = _model(tmp_path / "broken", 10)
    (broken / "last").mkdir()
    named = _model(tmp_path / "named", 10)
    _model(named / "last", 30)
    models = {"broken": broken, "named": named, "named_last": tmp_path / "mine"}
    with caplog.at_level(logging.WARNING):
        assert with_last_policies(models) == models
    assert "'broken': its last policy" in caplog.text and "lacks" in caplog.text


@pytest.mark.parametrize(
    ("flag", "expected"), [([], ["grpo", "grpo_last"]), (["--no-last-policies"], ["grpo"])]
)
def test_the_cli_adds_last_policies_unless_told_not_to(tmp_path, monkeypatch, flag, expected):
    grpo = _model(tmp_path / "grpo", 20)
    _model(grpo / "last", 60)
    seen = {}

    def evaluate_models(dataset_dir, models, out, **kwargs):
        seen["models"] = models
        return SimpleNamespace(paths={"markdown": Path(out) / "summary.md"})

    monkeypatch.setattr("cellrlhf.evaluation.evaluate.evaluate_models", evaluate_models)
    argv = ["--dataset_dir", str(tmp_path), "--model", f"grpo={grpo}", "--out", str(tmp_path / "o")]
    assert evaluation_cli.cli(argv + flag) == 0
    assert list(seen["models"]) == expected


def test_models_rl_did_not_train_get_a_grammar_row_next_to_a_constrained_policy(tmp_path):
    sft = _model(tmp_path / "sft", None, stage="sft")
    ppo = _model(tmp_path / "ppo", 10)
    grpo = _model(tmp_path / "grpo", 20, constrain_cells=True)
    models = {"sft": sft, "ppo": ppo, "ppo_last": ppo, "grpo": grpo, "grpo_last": grpo}
    assert list(with_grammar_rows(models).items()) == [
        ("sft", sft),
        ("sft_grammar", sft),
        ("ppo", ppo),  # an RL policy is sampled as trained (PPO - SFT is like with like)
        ("ppo_last", ppo),
        ("grpo", grpo),
        ("grpo_last", grpo),
    ]
    # no constrained policy: nothing to compare like with like; a named row is not doubled
    free = {"sft": sft, "ppo": ppo}
    assert with_grammar_rows(free) == free
    named = {"sft": sft, "sft_grammar": tmp_path / "mine", "grpo": grpo}
    assert with_grammar_rows(named) == named


def test_a_grammar_row_is_sampled_under_the_grammar_unless_the_argument_says():
    from cellrlhf.evaluation.prediction_sampling import constrained_mode

    assert constrained_mode(None, {}, "sft_grammar") == (True, "grammar row")
    assert constrained_mode(None, {}, "sft") == (False, "cellrlhf.json")
    assert constrained_mode(None, {"constrain_cells": True}, "grpo") == (True, "cellrlhf.json")
    assert constrained_mode(False, {}, "sft_grammar") == (False, "argument")


def test_identical_weights_group_only_models_sampled_the_same_way():
    from cellrlhf.evaluation.evaluate import identical_models

    def record(sha, constrained):
        return {"weights_sha256": sha, "validity": {"constrained": constrained}}

    records = {
        "sft": record("a", False),
        "sft_grammar": record("a", True),  # same weights, other samples: rows differ
        "grpo": record("a", True),  # kept its starting policy, sampled under the grammar
        "grpo_last": record("b", True),
        "ppo": record("a", False),
    }
    assert identical_models(records) == [["sft", "ppo"], ["sft_grammar", "grpo"]]
