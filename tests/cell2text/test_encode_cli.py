"""``cellrlhf encode`` options: ``--config`` YAML, flags on top, the positional input file."""

from __future__ import annotations

import pytest

from cellrlhf.cell2text.cli import make_parser, parse


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_config_plus_flags_and_the_positional_file(tmp_path):
    config = _yaml(tmp_path, "out: /o\ntop_k: 100\nobs_columns: [cell_type]\nseed: 3\n")
    options = parse(["cells.h5ad", "--config", config, "--top-k", "50", "--obs-columns", "a,b"])
    assert (options.input, options.out, options.top_k, options.seed) == ("cells.h5ad", "/o", 50, 3)
    assert options.obs_columns == ["a", "b"]
    options = parse(["--config", config, "--input", "x.h5ad", "--duplicates", "sum"])
    assert (options.input, options.obs_columns, options.duplicates) == (
        "x.h5ad",
        ["cell_type"],
        "sum",
    )
    config = _yaml(tmp_path, "input: y.h5ad\nout: /o\n")
    assert parse(["--config", config]).input == "y.h5ad"


def test_input_is_needed_once(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse(["--out", "o"])
    assert "name the .h5ad file: cellrlhf encode FILE.h5ad --out DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["a.h5ad", "--input", "b.h5ad", "--out", "o"])
    assert "two input files: a.h5ad and --input b.h5ad" in capsys.readouterr().err


def test_unknown_keys_flags_and_bad_values_are_refused(tmp_path, capsys):
    config = _yaml(tmp_path, "out: o\ntopk: 5\n")
    with pytest.raises(SystemExit):
        parse(["a.h5ad", "--config", config])
    err = capsys.readouterr().err
    assert f"{config}: unknown key(s) topk; remove or rename them (known keys: " in err
    assert "top_k" in err
    with pytest.raises(SystemExit):
        parse(["a.h5ad", "--out", "o", "--topk", "5"])
    assert "unrecognized arguments: --topk 5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["a.h5ad", "--out", "o", "--duplicates", "mean"])
    assert "argument --duplicates: invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--seed must be in \[0, 2\*\*64\), got -1"):
        parse(["a.h5ad", "--out", "o", "--seed", "-1"])


def test_help_leads_with_config_and_names_the_file():
    text = make_parser().format_help()
    head = "\n".join(text.splitlines()[:8])
    assert "--config FILE.yaml" in head and "FILE.h5ad" in text.splitlines()[0]
    assert "inherited options" not in text
    assert text.index("--config FILE.yaml") < text.index("--top_k")
