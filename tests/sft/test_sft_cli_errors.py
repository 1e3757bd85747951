"""Mistakes on the ``cellrlhf sft`` command line end in one message, not a traceback."""

from cellrlhf.cli import main
from tests.fixtures.tiny_model import tiny_args


def test_missing_local_model_directory(tiny_data, tmp_path, capsys):
    argv = tiny_args("sft", tiny_data, tmp_path / "out", "--model_config", "none")
    assert main(["sft", *argv, "--model_name_or_path", "./nope"]) == 2
    err = capsys.readouterr().err
    assert "model directory ./nope does not exist" in err
    assert "Traceback" not in err and "HFValidationError" not in err and "Repo id" not in err


def test_model_config_typo_through_the_cli(tiny_data, tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text("model_type: llama\nhiden_size: 64\n")
    argv = tiny_args("sft", tiny_data, tmp_path / "out", "--eval_generation_samples", "0")
    assert main(["sft", *argv, "--model_config", str(typo)]) == 2
    err = capsys.readouterr().err
    assert "unknown model config key(s) ['hiden_size']" in err and "hidden_size" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "config.json").exists()
