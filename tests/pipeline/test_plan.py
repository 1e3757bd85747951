"""``cellrlhf pipeline --dry-run`` shows the expanded stages and runs none; the verdict closes a
run's terminal output."""

from __future__ import annotations

import json
import sys
import types

import pytest
import yaml

from cellrlhf.pipeline.plan import plan_lines
from cellrlhf.pipeline.run import cli, print_verdict
from cellrlhf.pipeline.spec import load_pipeline

SWEPT = {
    "run_dir": "RUN",
    "max_parallel": 2,
    "sweep": {"folds": 2, "seeds": [4]},
    "stages": [
        {"name": "data", "per": "fold", "command": ["--version", "--fold", "{fold}"]},
        {
            "name": "sft",
            "per": ["fold", "seed"],
            "accelerate_config": "acc.yaml",
            "command": ["sft", "--seed", "{seed}", "--output_dir", "{run_dir}/f{fold} s{seed}"],
        },
        {
            "name": "aggregate",
            "needs": ["sft"],
            "command": ["aggregate", {"foreach": ["fold", "seed"], "args": ["--eval", "f{fold}"]}],
        },
    ],
}


def test_dry_run_lists_expanded_stages_needs_and_quoted_commands(tmp_path):
    raw = {**SWEPT, "run_dir": str(tmp_path / "run")}
    lines = plan_lines(load_pipeline(raw))
    run = tmp_path / "run"
    assert lines == [
        f"{run}: 5 stages, max_parallel 2, sweep fold [0, 1], seed [4]",
        "[1/5] data_f0 (to run: not run yet)",
        "    cellrlhf --version --fold 0",
        "[2/5] data_f1 (to run: not run yet)",
        "    cellrlhf --version --fold 1",
        "[3/5] sft_f0_s4 (to run: not run yet)",
        "    needs data_f0",
        f"    accelerate launch --config_file acc.yaml -m cellrlhf sft --seed 4 --output_dir "
        f"'{run}/f0 s4'",
        "[4/5] sft_f1_s4 (to run: not run yet)",
        "    needs data_f1",
        f"    accelerate launch --config_file acc.yaml -m cellrlhf sft --seed 4 --output_dir "
        f"'{run}/f1 s4'",
        "[5/5] aggregate (to run: not run yet)",
        "    needs sft_f0_s4, sft_f1_s4",
        "    cellrlhf aggregate --eval f0 --eval f1",
    ]
    spec = load_pipeline(raw)
    assert spec.stage_names(["sft", "data_f1", "sft_f0_s4"]) == [
        "sft_f0_s4",
        "sft_f1_s4",
        "data_f1",
    ]
    with pytest.raises(KeyError, match="unknown stage 'sft_f2_s4'"):
        spec.stage_names(["sft_f2_s4"])
    only = plan_lines(load_pipeline(raw), only=["data_f1", "aggregate"])
    assert only[1:] == [
        "[1/2] data_f1 (to run: not run yet)",
        "    cellrlhf --version --fold 1",
        "[2/2] aggregate (to run: not run yet)",
        "    cellrlhf aggregate --eval f0 --eval f1",
    ]


def test_cli_dry_run_runs_nothing(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(SWEPT))
    assert cli(["--config", str(path), "--run-dir", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[5/5] aggregate" in out and "sft_f1_s4" in out
    assert (
        not (tmp_path / "run" / ".pipeline").exists() and not (tmp_path / "run" / "logs").exists()
    )


def test_the_verdict_is_printed_last(tmp_path, capsys, monkeypatch):
    seen = []

    def verdict_lines(run_dir):
        seen.append(run_dir)
        return ["| setting | best model |", "GRPO did not improve over SFT."]

    fake = types.ModuleType("cellrlhf.evaluation.verdict")
    fake.verdict_lines = verdict_lines
    monkeypatch.setitem(sys.modules, "cellrlhf.evaluation.verdict", fake)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"run_dir": "x", "stages": [{"name": "v", "command": ["-V"]}]}))
    assert cli(["--config", str(path), "--run-dir", str(tmp_path / "run"), "--no-report"]) == 0
    assert seen == [tmp_path / "run"]
    out = capsys.readouterr().out
    assert out.endswith("\nVerdict\n| setting | best model |\nGRPO did not improve over SFT.\n")


def test_no_verdict_module_or_results_prints_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cellrlhf.evaluation.verdict", None)  # import fails
    assert print_verdict(tmp_path) == []

    def missing(run_dir):
        raise FileNotFoundError(f"{run_dir}/aggregate does not exist")

    fake = types.ModuleType("cellrlhf.evaluation.verdict")
    fake.verdict_lines = missing
    monkeypatch.setitem(sys.modules, "cellrlhf.evaluation.verdict", fake)
    assert print_verdict(tmp_path) == []
    assert capsys.readouterr().out == ""


def test_the_terminal_verdict_names_the_evidence_and_its_baseline(tmp_path, capsys, monkeypatch):
    fake = types.ModuleType("cellrlhf.evaluation.verdict")
    fake.verdict_lines = lambda run_dir: ["SFT did not improve over mean."]
    monkeypatch.setitem(sys.modules, "cellrlhf.evaluation.verdict", fake)
    data = {"vocab": {}, "config": {"evidence": {"kinds": ["average_response", "components"]}}}
    for fold in (0, 1):  # one sentence per distinct data set, not per fold
        (tmp_path / f"fold{fold}" / "data").mkdir(parents=True)
        (tmp_path / f"fold{fold}" / "data" / "manifest.json").write_text(json.dumps(data))
    (tmp_path / "eval").mkdir()  # an evaluation's manifest is not a data set's
    (tmp_path / "eval" / "manifest.json").write_text(json.dumps({"config": data["config"]}))
    lines = print_verdict(tmp_path)
    assert lines == [
        "SFT did not improve over mean.",
        "Prompts carry measured evidence from training cells: `average_response` (vs `mean`), "
        "`components` (vs `additive`); each model is to be read against the baseline that uses "
        "the same information.",
    ]
    assert capsys.readouterr().out.endswith(lines[-1] + "\n")
