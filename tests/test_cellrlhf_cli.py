import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from cellrlhf.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_fails_with_usage(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_cli():
    result = subprocess.run(
        [sys.executable, "-m", "cellrlhf", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("cellrlhf ")


# ------------------------------------------------------------------ errors a person can act on
REPO = Path(__file__).resolve().parents[1]
SIM = {"n_cells": 400, "n_genes": 50, "n_perturbations": 6, "n_combinations": 2, "seed": 0}


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory):
    from cellrlhf.data.simulate import simulate_perturbation_data

    path = tmp_path_factory.mktemp("h5ad") / "sim.h5ad"
    simulate_perturbation_data(**SIM).write_h5ad(path)
    return path


def _config(tmp_path, h5ad, **sections) -> Path:
    spec = yaml.safe_load((REPO / "configs" / "data" / "simulated.yaml").read_text())
    spec["source"] = {"path": str(h5ad)}
    spec["progress"] = False
    spec["rl"] = {**spec.get("rl", {}), "min_cells": 5}
    spec.update(sections)
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _fails_with(capsys, argv, *expected) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


def _build(config, tmp_path) -> list[str]:
    return ["data", "build", "--config", str(config), "--out", str(tmp_path / "out")]


def test_truncated_h5ad_is_one_clear_error(tmp_path, sim_file, capsys):
    bad = tmp_path / "truncated.h5ad"
    bad.write_bytes(sim_file.read_bytes()[: sim_file.stat().st_size // 2])
    for backed in (True, False):
        config = _config(tmp_path, bad, source={"path": str(bad), "backed": backed})
        _fails_with(capsys, _build(config, tmp_path), f"cannot read {bad}", "truncated or corrupt")


def test_flipped_bytes_in_h5ad_are_one_clear_error(tmp_path, sim_file, capsys):
    data = bytearray(sim_file.read_bytes())
    data[1000:1100] = bytes(b ^ 0xFF for b in data[1000:1100])  # object headers
    bad = tmp_path / "flipped.h5ad"
    bad.write_bytes(bytes(data))
    _fails_with(capsys, _build(_config(tmp_path, bad), tmp_path), f"cannot read {bad}", "corrupt")


def test_malformed_yaml_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsource:\n  path: [1, 2\n")
    _fails_with(capsys, ["data", "build", "--config", str(bad)], f"{bad}:4:1: malformed YAML")


def test_wrong_type_in_config_names_the_key(tmp_path, sim_file, capsys):
    config = _config(tmp_path, sim_file)
    err = _fails_with(
        capsys,
        [*_build(config, tmp_path), "--set", 'split.test_fraction="0.2"'],
        "split.test_fraction must be a number, got '0.2' (str)",
    )
    assert "not supported between" not in err
    _fails_with(
        capsys,
        [*_build(config, tmp_path), "--set", "expression.chunk_size=1e3"],
        "expression.chunk_size must be an integer, got '1e3'",
    )


def test_log_scale_input_with_log1p_transform_through_the_cli(tmp_path, sim_file, capsys):
    import anndata as ad

    adata = ad.read_h5ad(sim_file)
    X = sp.csr_matrix(adata.X, dtype=np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    adata.X = sp.csr_matrix((sp.diags(1e4 / totals) @ X).log1p(), dtype=np.float32)
    logged = tmp_path / "logged.h5ad"
    adata.write_h5ad(logged)
    _fails_with(
        capsys,
        _build(_config(tmp_path, logged), tmp_path),
        "already looks log-transformed",
        "expression.transform: none",
    )


def test_dense_float16_input_builds(tmp_path, sim_file, capsys, caplog):
    import anndata as ad

    adata = ad.read_h5ad(sim_file)
    adata.X = np.asarray(adata.X.toarray(), dtype=np.float16)
    path = tmp_path / "f16.h5ad"
    adata.write_h5ad(path)
    with caplog.at_level("INFO"):
        assert main([*_build(_config(tmp_path, path), tmp_path), "--no-progress"]) == 0
    assert "float16: reading its values as float32" in caplog.text
    assert "does not support dtype" not in capsys.readouterr().err


def test_debug_flag_and_environment_show_the_traceback(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [\n")
    with pytest.raises(yaml.YAMLError):
        main(["data", "build", "--config", str(bad), "--debug"])
    monkeypatch.setenv("CELLRLHF_DEBUG", "1")
    with pytest.raises(yaml.YAMLError):
        main(["data", "build", "--config", str(bad)])


def test_error_messages_of_library_errors():
    from huggingface_hub.errors import HFValidationError

    from cellrlhf.cli_errors import error_message

    err = HFValidationError(
        "Repo id must be in the form 'repo_name' or 'namespace/repo_name': './nope'. Use "
        "`repo_type` argument if needed."
    )
    assert error_message(err).startswith("model directory ./nope does not exist")
    assert error_message(FileNotFoundError(2, "No such file or directory", "x.yaml")) == (
        "No such file or directory: x.yaml"
    )
    assert error_message(TypeError("a bug")) is None  # unexpected: keeps its traceback
    assert error_message(RuntimeError("a bug")) is None


def test_stage_script_prints_one_line_and_debug_shows_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: 3\nlearning_rate: [1\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CELLRLHF_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "sft.py", "--config", str(bad)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert f"sft.py: error: {bad}:3:1: malformed YAML" in done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run(
        [sys.executable, "sft.py", "--config", str(bad), "--debug"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "Traceback" in done.stderr


@pytest.mark.parametrize("outcome", ["returns", "user_error", "crash"])
def test_a_command_ends_the_process_group_it_opened(outcome, tmp_path, monkeypatch):
    # left alive at exit, a gloo / NCCL group's threads can abort a rank after its work was saved
    import torch.distributed as dist

    from cellrlhf.cli_errors import run_guarded

    monkeypatch.delenv("CELLRLHF_DEBUG", raising=False)

    def command(argv):
        dist.init_process_group(
            "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
        )
        assert dist.is_initialized()
        if outcome == "user_error":
            raise FileNotFoundError("no such dataset directory")
        if outcome == "crash":
            raise RuntimeError("a bug")
        return 0

    if outcome == "crash":
        with pytest.raises(RuntimeError, match="a bug"):
            run_guarded("cellrlhf test", command, [])
    else:
        assert run_guarded("cellrlhf test", command, []) == (0 if outcome == "returns" else 2)
    assert not dist.is_initialized()
