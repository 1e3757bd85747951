import json
from pathlib import Path

import pytest

from cellrlhf.data.cli import cli

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "data" / "simulated.yaml"
FAST = [
    "--set", "source.simulate.n_cells=500",
    "--set", "source.simulate.n_genes=60",
    "--set", "sft.tasks.perturbation_response.max_examples=20",
    "--set", "rl.min_cells=5",
]  # fmt: skip


def test_build_prints_a_summary_and_check_passes(tmp_path, capsys):
    out = tmp_path / "sim"
    assert (
        cli(
            [
                "build",
                "--config",
                str(CONFIG),
                "--out",
                str(out),
                "--no-progress",
                "--split",
                "random_cells",
                *FAST,
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["simulated"] is True and summary["split"] == "random_cells"
    assert summary["counts"]["sft"]["train"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["source"]["simulate"]["n_cells"] == 500
    assert manifest["fingerprint"] == summary["fingerprint"]
    assert cli(["check", str(out)]) == 0
    assert "none found" in capsys.readouterr().out


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert cli(["build", "--config", str(CONFIG), "--set", "split.kind=nope"]) == 2
    assert "split.kind" in capsys.readouterr().err
    assert cli(["build", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["check", str(tmp_path)]) == 2
    assert "not a built cellrlhf dataset" in capsys.readouterr().err


def test_list_and_simulate(tmp_path, capsys):
    assert cli(["list"]) == 0
    listing = capsys.readouterr().out
    assert (
        "perturbench_devel" in listing
        and "pbmc68k_reduced" in listing
        and "BSD-3-Clause" in listing
    )
    path = tmp_path / "sim.h5ad"
    assert cli(["simulate", "--out", str(path), "--n-cells", "100", "--n-genes", "30"]) == 0
    assert "SIMULATED" in capsys.readouterr().out
    assert path.exists()


def test_top_level_command_dispatches(capsys):
    from cellrlhf.cli import main

    assert main(["data", "list"]) == 0
    assert "perturbench_devel" in capsys.readouterr().out


@pytest.mark.slow
def test_fingerprint_is_the_same_in_another_process(tmp_path):
    """Content hashing must not depend on the process (hash seeds, set order, memory)."""
    import os
    import subprocess
    import sys

    from cellrlhf.data.build import build_datasets
    from cellrlhf.data.config import load_config

    overrides = [a for a in FAST if a != "--set"]
    here = build_datasets(
        load_config(CONFIG, [*overrides, "progress=false"]), out_dir=tmp_path / "a"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "cellrlhf", "data", "build", "--config", str(CONFIG),
         "--out", str(tmp_path / "b"), "--no-progress", *FAST],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    there = json.loads(done.stdout[done.stdout.index("{") :])
    assert there["fingerprint"] == here.fingerprint


def test_package_exports_are_lazy_and_resolve():
    import cellrlhf.data as data

    for name in data.__all__:
        assert getattr(data, name) is not None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--config", "d.yaml"], {"config": "d.yaml", "overrides": [], "no_progress": False}),
        (["--config=d.yaml", "--fold", "1", "--out", "o"], {"fold": 1, "out": "o"}),
        (["--config", "d.yaml", "--data-dir", "a", "--cache-dir", "b"], {"data_dir": "a"}),
        (["--config", "d.yaml", "--data_dir", "a", "--cache_dir", "b"], {"cache_dir": "b"}),
        (["--config", "d.yaml", "--set", "a.b=1", "--set", "c=2"], {"overrides": ["a.b=1", "c=2"]}),
        (["--config", "d.yaml", "--set", "a.b=1", "c=2", "--seed", "3"], {"seed": 3}),
        (["--config", "d.yaml", "--split", "random_cells", "--no-progress"], {"no_progress": True}),
    ],
)
def test_build_flags_parse_in_every_spelling_in_use(argv, expected):
    from cellrlhf.data.cli import BuildOptions, make_parser

    (options,) = make_parser("build").parse_args_and_config(argv)
    assert isinstance(options, BuildOptions)
    for key, value in expected.items():
        assert getattr(options, key) == value


def test_build_overrides_follow_the_flags():
    from cellrlhf.data.cli import BuildOptions, build_overrides

    options = BuildOptions(config="d.yaml", overrides=["a=1"], seed=4, no_progress=True)
    assert build_overrides(options) == ["a=1", "seed=4", "progress=false"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["build", "--config", "d.yaml", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
        (["build", "--out", "o"], "the following arguments are required: --config"),
        (["check"], "the following arguments are required: PATH"),
        (["simulate", "--out", "x.h5ad", "--n-cell", "5", "--n-gene", "5", "--nope"], "--nope"),
    ],
)
def test_bad_flags_are_one_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_or_missing_subcommand_lists_the_commands(capsys):
    assert cli(["biuld"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'biuld'" in err and "build, init, list, fetch, check, simulate" in err
    assert cli([]) == 2
    assert "simulate" in capsys.readouterr().err
    assert cli(["--help"]) == 0
    assert "cellrlhf data <command>" in capsys.readouterr().out


def test_simulate_reads_a_config_of_option_values_and_flags_override(tmp_path):
    from cellrlhf.data.cli import make_parser

    config = tmp_path / "sim.yaml"
    config.write_text("out: a.h5ad\nn_cells: 50\nseed: 3\n")
    (options,) = make_parser("simulate").parse_args_and_config(
        ["--config", str(config), "--seed", "4"]
    )
    assert (options.out, options.n_cells, options.n_genes, options.seed) == ("a.h5ad", 50, 200, 4)


def test_positional_subcommand_arguments(tmp_path):
    from cellrlhf.data.cli import make_parser

    (fetch,) = make_parser("fetch").parse_args_and_config(["x", "--data-dir", "d"])
    assert (fetch.name, fetch.data_dir, fetch.cache_dir) == ("x", "d", None)
    (init,) = make_parser("init").parse_args_and_config(["my.h5ad", "--force"])
    assert (init.h5ad, init.out, init.force) == ("my.h5ad", None, True)
    config = tmp_path / "check.yaml"
    config.write_text("path: built/\n")
    (check,) = make_parser("check").parse_args_and_config(["--config", str(config)])
    assert check.path == "built/"
