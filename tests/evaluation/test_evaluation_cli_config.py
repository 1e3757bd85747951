"""``evaluate`` / ``predict`` / ``aggregate`` / ``evaluate --real``: ``--config`` YAML, flags on
top, unknown keys and flags refused with one message, help leading with ``--config``."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellrlhf.evaluation import aggregate_cli, command, predict_cli
from cellrlhf.evaluation import cli as evaluate_cli
from cellrlhf.evaluation.settings import EvalSettings, load_eval_settings

REPO = Path(__file__).resolve().parents[2]
EVAL_CONFIGS = sorted((REPO / "configs" / "eval").glob("*.yaml"))

PARSERS = {
    "evaluate": (evaluate_cli.make_parser, ["--dataset_dir", "d", "--out", "o"]),
    "predict": (predict_cli.make_parser, ["--model_dir", "m", "--dataset_dir", "d", "--out", "p.h5ad"]),
    "aggregate": (aggregate_cli.make_parser, ["--eval", "a=x", "--out", "o"]),
    "evaluate --real": (command.files_parser, ["--real", "r.h5ad", "--out", "o"]),
}  # fmt: skip


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("config", EVAL_CONFIGS, ids=lambda p: p.stem)
def test_every_eval_config_parses_to_the_settings_it_loads(config):
    """configs/eval/*.yaml as --config give the same settings as load_eval_settings."""
    for make_parser, required in (PARSERS["evaluate"], PARSERS["predict"]):
        parsed = make_parser().parse_args_and_config(["--config", str(config), *required])
        assert evaluate_cli.settings_from(parsed[-1]) == load_eval_settings(config)


def test_evaluate_config_plus_flags(tmp_path):
    config = _yaml(
        tmp_path,
        "dataset_dir: runs/data\nout: runs/eval_e\nmodel: [sft=runs/sft]\ncells_per_prompt: 8\n"
        "baselines: [control, mean]\nde: false\n",
    )
    dataset, options, settings = evaluate_cli.make_parser().parse_args_and_config(
        ["--config", config, "--cells-per-prompt", "16", "--model", "a=x", "--model", "b=y"]
        + ["--output_dir", "runs/eval_f", "--skip-missing", "--no-progress"]
    )
    assert (dataset.dataset_dir, dataset.no_progress) == ("runs/data", True)
    # flags replace the YAML's list, repeats add up
    assert (options.out, options.model, options.skip_missing) == (
        "runs/eval_f",
        ["a=x", "b=y"],
        True,
    )
    eval_settings = evaluate_cli.settings_from(settings)
    assert eval_settings == EvalSettings(
        cells_per_prompt=16, baselines=("control", "mean"), de=False
    )
    _, options, _ = evaluate_cli.make_parser().parse_args_and_config(["--config", config])
    assert options.model == ["sft=runs/sft"] and options.out == "runs/eval_e"


def test_the_pipeline_form_of_evaluate_parses():
    """configs/pipeline/*.yaml write `--config FILE --model a=X --model b=Y --skip-missing`."""
    argv = ["--config", str(REPO / "configs/eval/tiny.yaml"), "--dataset_dir", "d"]
    argv += ["--model", "sft=s", "--model", "grpo=g", "--skip-missing", "--out", "o"]
    _, options, settings = evaluate_cli.make_parser().parse_args_and_config(argv)
    assert options.model == ["sft=s", "grpo=g"] and options.skip_missing
    assert settings.cells_per_prompt == 8


def test_predict_and_aggregate_config_plus_flags(tmp_path):
    config = _yaml(tmp_path, "model_dir: /m\ndataset_dir: /d\nout: p.h5ad\nseed: 3\n")
    options, dataset, settings = predict_cli.make_parser().parse_args_and_config(
        ["--config", config, "--name", "mine", "--seed", "4"]
    )
    assert (options.model_dir, options.name, dataset.dataset_dir) == ("/m", "mine", "/d")
    assert evaluate_cli.settings_from(settings).predict_kwargs()["seed"] == 4
    config = _yaml(tmp_path, "eval: [f0=/e0, f1=/e1]\nout: /agg\nn_boot: 10\nmetric: [pearson]\n")
    (options,) = aggregate_cli.make_parser().parse_args_and_config(
        ["--config", config, "--n-boot", "20", "--confidence_level", "0.9"]
    )
    assert options.eval == ["f0=/e0", "f1=/e1"] and options.metric == ["pearson"]
    assert (options.n_boot, options.confidence_level, options.out) == (20, 0.9, "/agg")


def test_files_form_config_is_recognised_by_its_real_key(tmp_path, monkeypatch):
    config = _yaml(tmp_path, "real: r.h5ad\nout: o\npred: [m=p.h5ad]\nde: false\n")
    (options,) = command.files_parser().parse_args_and_config(
        ["--config", config, "--top-k", "5", "--no-split-half"]
    )
    assert (options.real, options.pred, options.de) == ("r.h5ad", ["m=p.h5ad"], False)
    assert (options.top_k, options.split_half) == (5, False)
    seen = []
    monkeypatch.setattr(command, "main", seen.append)
    assert command.cli(["--config", config]) == 0
    assert seen[0].real == "r.h5ad"


@pytest.mark.parametrize("name", PARSERS)
def test_unknown_keys_and_flags_are_one_usage_error(name, tmp_path, capsys):
    make_parser, required = PARSERS[name]
    config = _yaml(tmp_path, "seeed: 1\n")
    with pytest.raises(SystemExit) as exit_:
        make_parser().parse_args_and_config(["--config", config, *required])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"{config}: unknown key(s) seeed; remove or rename them (known keys: " in err
    assert " seed, " in err or " seed)" in err
    with pytest.raises(SystemExit):
        make_parser().parse_args_and_config([*required, "--seeed", "1"])
    assert "unrecognized arguments: --seeed 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_parser().parse_args_and_config(["--config", str(tmp_path / "none.yaml")])
    assert f"--config {tmp_path / 'none.yaml'}: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("name", PARSERS)
def test_missing_option_and_wrong_type_are_usage_errors(name, capsys):
    make_parser, required = PARSERS[name]
    with pytest.raises(SystemExit):
        make_parser().parse_args_and_config(required[2:])
    assert "the following arguments are required: " + required[0] in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_parser().parse_args_and_config([*required, "--seed", "one"])
    assert "argument --seed: invalid int value: 'one'" in capsys.readouterr().err


@pytest.mark.parametrize("name", PARSERS)
def test_help_leads_with_config(name):
    make_parser, required = PARSERS[name]
    text = make_parser().format_help()
    head = "\n".join(text.splitlines()[:8])
    assert "--config FILE.yaml" in head and "YAML file of option values" in head
    assert text.index("--config FILE.yaml") < text.index(required[0] + " ")
    assert "inherited options" not in text and "``" not in text


def test_bad_values_are_refused_before_running():
    with pytest.raises(ValueError, match="name at least one evaluation"):
        aggregate_cli.AggregateOptions(eval=[], out="o")
    with pytest.raises(ValueError, match="n_boot must be positive"):
        aggregate_cli.AggregateOptions(eval=["a=b"], out="o", n_boot=0)
    with pytest.raises(ValueError, match=r"--out p.csv: write predictions to an .h5ad file"):
        predict_cli.PredictOptions(model_dir="m", out="p.csv")
