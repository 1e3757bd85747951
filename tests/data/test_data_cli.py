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
