"""``cellrlhf chat`` / ``cellrlhf serve`` options: dataclasses read by CellTrlParser, with a
``--config`` YAML, every flag spelling in use, and one usage error for an unknown key or flag."""

from __future__ import annotations

import pytest

from cellrlhf.chat import repl, web
from cellrlhf.chat.model_args import ModelOptions

MODEL_FLAGS = [
    "--model", "m", "--revision", "v1", "--device-map", "auto", "--dtype", "bfloat16",
    "--constrain-cells", "--trust-remote-code",
]  # fmt: skip


def _parse(module, argv):
    (options,) = module.make_parser().parse_args_and_config(argv)
    return options


def _model_fields(options) -> dict:
    names = ("model", "revision", "device_map", "dtype", "constrain_cells", "trust_remote_code")
    return {n: getattr(options, n) for n in names}


MODEL_VALUES = dict(
    model="m",
    revision="v1",
    device_map="auto",
    dtype="bfloat16",
    constrain_cells=True,
    trust_remote_code=True,
)


def test_serve_defaults_bind_loopback():
    options = _parse(web, ["--model", "m"])
    assert isinstance(options, ModelOptions)
    assert (options.host, options.port, options.auth) == ("127.0.0.1", 7860, None)
    assert (options.max_upload_mb, options.max_new_tokens, options.example) == (500, 512, True)
    assert (options.constrain_cells, options.trust_remote_code) == (False, False)


def test_serve_flags_as_documented():
    argv = [*MODEL_FLAGS, "--host", "0.0.0.0", "--port", "8000", "--auth", "a:b"]
    options = _parse(
        web, [*argv, "--max-upload-mb", "2.5", "--max-new-tokens", "7", "--no-example"]
    )
    assert _model_fields(options) == MODEL_VALUES
    assert (options.host, options.port, options.auth) == ("0.0.0.0", 8000, "a:b")
    assert (options.max_upload_mb, options.max_new_tokens, options.example) == (2.5, 7, False)
    assert _parse(web, ["--model", "m", "--no_example"]).example is False


def test_chat_flags_as_documented():
    argv = [*MODEL_FLAGS, "--adata", "x.h5ad", "--layer", "counts", "--gene-symbols", "sym"]
    options = _parse(repl, [*argv, "--max-new-tokens", "9", "--temperature", "0.7", "--seed", "3"])
    assert _model_fields(options) == MODEL_VALUES
    assert (options.adata, options.layer, options.gene_symbols) == ("x.h5ad", "counts", "sym")
    assert (options.max_new_tokens, options.temperature, options.seed) == (9, 0.7, 3)
    options = _parse(repl, ["--model", "m"])
    assert (options.adata, options.max_new_tokens, options.temperature, options.seed) == (
        None, 512, 0.0, 0
    )  # fmt: skip


def test_config_file_with_flag_overrides(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("model: runs/x/ppo\nconstrain_cells: true\nport: 9000\nexample: false\n")
    options = _parse(web, ["--config", str(config), "--port", "9001"])
    assert (options.model, options.constrain_cells, options.port) == ("runs/x/ppo", True, 9001)
    assert options.example is False and options.host == "127.0.0.1"
    options = _parse(web, ["--config", str(config), "--constrain-cells", "false"])
    assert options.constrain_cells is False
    chat = tmp_path / "chat.yaml"
    chat.write_text("model: runs/x/sft\nadata: cells.h5ad\ntemperature: 0.5\n")
    options = _parse(repl, [f"--config={chat}", "--seed", "4"])
    assert (options.model, options.adata, options.temperature, options.seed) == (
        "runs/x/sft", "cells.h5ad", 0.5, 4
    )  # fmt: skip


@pytest.mark.parametrize("module", [repl, web])
def test_unknown_keys_and_flags_are_one_usage_error(module, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model: m\nhots: 0.0.0.0\n")
    with pytest.raises(SystemExit) as exit_info:
        _parse(module, ["--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{config}: unknown key(s) hots; remove or rename them (known keys: " in err
    assert "constrain_cells" in err and "max_new_tokens" in err
    with pytest.raises(SystemExit):
        _parse(module, ["--model", "m", "--public"])
    assert "unrecognized arguments: --public (`cellrlhf " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(module, [])
    assert "the following arguments are required: --model" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        (web, ["--port", "70000"], r"--port 70000: give a port number in 0\.\.65535"),
        (web, ["--max-upload-mb", "0"], "--max-upload-mb 0.0: give a positive size"),
        (web, ["--max-new-tokens", "0"], "--max-new-tokens 0: give at least 1"),
        (repl, ["--max-new-tokens", "0"], "--max-new-tokens 0: give at least 1"),
        (repl, ["--temperature", "-1"], r"--temperature -1\.0: give 0 \(greedy\) or more"),
    ],
)
def test_bad_values_name_the_flag(module, argv, message):
    with pytest.raises(ValueError, match=message):
        _parse(module, ["--model", "m", *argv])


@pytest.mark.parametrize("module", [repl, web])
def test_help_leads_with_config(module):
    text = module.make_parser().format_help()
    assert "--config FILE.yaml" in "\n".join(text.splitlines()[:8])
    assert text.index("--config FILE.yaml") < text.index("--model") and "inherited" not in text
    assert "--constrain-cells" in text and "--max-new-tokens" in text
