"""``cellrlhf evaluate`` samples each policy the way it was trained and records it."""

import json
import shutil
from pathlib import Path

from cellrlhf.evaluation.cli import cli, make_parser, settings_from

REPO = Path(__file__).resolve().parents[2]


def _constrained_policy(sim_model_dir, tmp_path) -> Path:
    policy = tmp_path / "grpo"
    shutil.copytree(sim_model_dir, policy)
    info = json.loads((policy / "cellrlhf.json").read_text())
    info.update(stage="grpo", constrain_cells=True)
    (policy / "cellrlhf.json").write_text(json.dumps(info))
    return policy


def _settings(argv):
    return settings_from(make_parser().parse_args_and_config(argv)[-1])


def test_the_flag_overrides_both_ways():
    base = ["--dataset_dir", "d", "--model", "a=b", "--out", "o"]
    assert _settings(base).constrain_cells is None
    assert _settings(base).predict_kwargs()["constrain_cells"] is None
    for flag, value in [
        (["--constrain-cells"], True),
        (["--constrain_cells"], True),
        (["--constrain_cells", "true"], True),
        (["--no-constrain-cells"], False),
        (["--no_constrain_cells"], False),
        (["--constrain-cells", "false"], False),
    ]:
        assert _settings([*base, *flag]).constrain_cells is value, flag


def test_manifest_records_how_each_model_was_sampled(sim_model_dir, sim_dataset_dir, tmp_path):
    policy = _constrained_policy(sim_model_dir, tmp_path)
    out = tmp_path / "eval"
    code = cli(
        ["--dataset_dir", str(sim_dataset_dir), "--model", f"sft={sim_model_dir}",
         "--model", f"grpo={policy}", "--config", str(REPO / "configs" / "eval" / "tiny.yaml"),
         "--max_prompts", "2", "--cells_per_prompt", "4", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["constrain_cells"] is None  # each model as trained
    sft, grpo = manifest["models"]["sft"]["validity"], manifest["models"]["grpo"]["validity"]
    assert sft["constrained"] is False and "unconstrained" not in sft
    assert grpo["constrained"] is True and grpo["valid_cell_fraction"] == 1.0
    # both figures of the constrained policy: its own (unconstrained) validity is the SFT's here
    assert grpo["unconstrained"]["valid_cell_fraction"] == sft["valid_cell_fraction"]
    # the like-with-like row: the same SFT model under the grammar (RL minus it is RL's effect)
    assert list(manifest["models"]) == ["sft", "sft_grammar", "grpo"]
    grammar = manifest["models"]["sft_grammar"]
    assert grammar["dir"] == manifest["models"]["sft"]["dir"]
    assert grammar["validity"]["constrained"] is True
    assert grammar["validity"]["valid_cell_fraction"] == 1.0
    # sampled under the grammar it is the same model as the unchanged constrained policy
    assert grammar["validity"]["unconstrained"] == grpo["unconstrained"]


def test_no_grammar_rows_without_a_constrained_policy_or_when_told(
    sim_model_dir, sim_dataset_dir, tmp_path
):
    policy = _constrained_policy(sim_model_dir, tmp_path)
    base = ["--dataset_dir", str(sim_dataset_dir), "--config",
            str(REPO / "configs" / "eval" / "tiny.yaml"), "--max_prompts", "1",
            "--cells_per_prompt", "2", "--no-progress"]  # fmt: skip
    for name, models, flags in [
        ("free", [f"sft={sim_model_dir}"], []),
        ("told", [f"sft={sim_model_dir}", f"grpo={policy}"], ["--no_grammar_rows"]),
        ("forced", [f"sft={sim_model_dir}", f"grpo={policy}"], ["--constrain_cells", "true"]),
    ]:
        argv = [*base, *[a for m in models for a in ("--model", m)], *flags]
        assert cli([*argv, "--out", str(tmp_path / name)]) == 0
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert "sft_grammar" not in manifest["models"], name
