import numpy as np
import pandas as pd
import pytest

from cellrlhf.cli import main
from cellrlhf.evaluation.command import DEPRECATION, cli


@pytest.fixture
def files(perturbation_adata, tmp_path):
    perts = ("control", "KLF1", "CEBPA", "KLF1+CEBPA", "MAPK1", "MAPK1+KLF1", "SET")
    full = perturbation_adata(seed=0, perturbations=perts, n_cells=20, effect=0.5)
    test_perts = {"control", "KLF1+CEBPA", "SET", "MAPK1+KLF1"}
    is_test = full.obs["perturbation"].isin(test_perts).to_numpy()
    is_ctrl = (full.obs["perturbation"] == "control").to_numpy()
    paths = {
        "train": tmp_path / "train.h5ad",
        "real": tmp_path / "real.h5ad",
        "pred": tmp_path / "model.h5ad",
    }
    full[~is_test | is_ctrl].copy().write_h5ad(paths["train"])
    real = full[is_test].copy()
    real.write_h5ad(paths["real"])
    pred = perturbation_adata(seed=1, perturbations=perts, n_cells=20, effect=0.5, prefix="p")
    pred[pred.obs["perturbation"].isin(test_perts).to_numpy()].copy().write_h5ad(paths["pred"])
    return paths


def test_evaluate_real_writes_table_markdown_and_plots(files, tmp_path, capsys):
    out = tmp_path / "report"
    code = cli(
        [
            "--pred",
            str(files["pred"]),
            "--real",
            str(files["real"]),
            "--train",
            str(files["train"]),
            "--out",
            str(out),
            "--top-k",
            "10",
        ]
    )
    assert code == 0
    for name in ("metrics.csv", "summary.csv", "metrics.md", "metrics.png", "delta_scatter.png"):
        assert (out / name).stat().st_size > 0
    table = pd.read_csv(out / "metrics.csv")
    assert set(table["method"]) == {
        "model",
        "control",
        "mean",
        "additive",
        "ridge",
        "nearest",
        "split_half",
    }
    assert set(table.loc[table["method"] == "additive", "perturbation"]) == {
        "KLF1+CEBPA",
        "MAPK1+KLF1",
    }
    summary = pd.read_csv(out / "summary.csv")
    assert "split_half (Spearman-Brown)" in set(summary["method"])
    assert np.isnan(summary.loc[summary["method"] == "control", "pearson_delta"]).all()
    text = (out / "metrics.md").read_text()
    assert "| model |" in text and "### combo" in text and "pearson_delta_top10" in text
    assert "| additive |" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["evaluate", "eval"])
def test_files_form_through_the_main_command(command, files, tmp_path, capsys):
    """``cellrlhf evaluate --real`` scores a prediction file; ``cellrlhf eval`` still does, with
    a one-line notice naming the new form."""
    out = tmp_path / "r2"
    code = main(
        [
            command,
            "--pred",
            f"mine={files['pred']}",
            "--real",
            str(files["real"]),
            "--out",
            str(out),
            "--no-split-half",
            "--no-de",
        ]
    )
    assert code == 0
    assert set(pd.read_csv(out / "metrics.csv")["method"]) == {"mine"}
    notices = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
    assert notices == ([DEPRECATION] if command == "eval" else [])


def test_evaluate_help_names_both_forms(capsys):
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--dataset_dir" in out and "cellrlhf evaluate --real TEST.h5ad --pred" in out
    with pytest.raises(SystemExit) as exit_:
        cli(["--real", "x.h5ad", "--help"])
    assert exit_.value.code == 0
    assert "--train" in capsys.readouterr().out


def test_files_form_errors(files, tmp_path):
    with pytest.raises(FileNotFoundError, match="--pred"):
        cli(
            [
                "--pred",
                str(tmp_path / "missing.h5ad"),
                "--real",
                str(files["real"]),
                "--out",
                str(tmp_path),
            ]
        )
    with pytest.raises(ValueError, match=r"unknown baseline\(s\) \['oracle'\]"):
        cli(
            [
                "--real",
                str(files["real"]),
                "--train",
                str(files["train"]),
                "--baselines",
                "oracle",
                "--out",
                str(tmp_path),
            ]
        )
    with pytest.raises(ValueError, match="nothing to evaluate"):
        cli(["--real", str(files["real"]), "--no-split-half", "--out", str(tmp_path)])
