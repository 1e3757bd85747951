import numpy as np
import pandas as pd
import pytest

from cellrlhf.cli import main
from cellrlhf.reward.eval_cli import cli


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


def test_eval_writes_table_markdown_and_plots(files, tmp_path, capsys):
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


def test_eval_through_the_main_command(files, tmp_path):
    out = tmp_path / "r2"
    code = main(
        [
            "eval",
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


def test_eval_errors(files, tmp_path):
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
    with pytest.raises(SystemExit, match="unknown baseline"):
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
    with pytest.raises(SystemExit, match="nothing to evaluate"):
        cli(["--real", str(files["real"]), "--no-split-half", "--out", str(tmp_path)])
