import logging
from pathlib import Path

import pytest

from cellrlhf.cli import COMMANDS
from cellrlhf.cli import main as cellrlhf_main
from cellrlhf.evaluation.model_dirs import parse_model_args, resolve_model_dirs
from cellrlhf.evaluation.settings import EvalSettings, load_eval_settings
from cellrlhf.sft.model_dir import ModelDirError

REPO = Path(__file__).resolve().parents[2]


def test_commands_are_registered():
    assert COMMANDS["evaluate"][0] == "cellrlhf.evaluation.command"
    assert COMMANDS["eval"][0] == "cellrlhf.evaluation.command:eval_alias"
    assert COMMANDS["predict"][0] == "cellrlhf.evaluation.predict_cli"


def test_missing_model_dir_is_a_clear_error(tmp_path, sim_dataset_dir, caplog):
    with caplog.at_level(logging.ERROR):
        code = cellrlhf_main(
            ["evaluate", "--dataset_dir", str(sim_dataset_dir), "--model", f"ppo={tmp_path}/x"]
            + ["--out", str(tmp_path / "out")]
        )
    assert code == 2
    assert "'ppo'" in caplog.text and "does not exist" in caplog.text
    assert "--skip-missing" in caplog.text
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_skip_missing_with_nothing_left_is_an_error(tmp_path):
    with pytest.raises(ModelDirError, match="no model to evaluate"):
        resolve_model_dirs({"ppo": tmp_path / "x"}, skip_missing=True)


def test_incomplete_model_dir_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(ModelDirError, match="lacks"):
        resolve_model_dirs({"sft": tmp_path / "m"})


@pytest.mark.parametrize("bad", ["ppo", "=dir", "ppo="])
def test_model_argument_needs_name_and_dir(bad):
    with pytest.raises(ValueError, match="NAME=DIR"):
        parse_model_args([bad])
    with pytest.raises(ValueError, match="twice"):
        parse_model_args(["a=x", "a=y"])


def test_evaluate_without_a_model_scores_baselines_and_says_what_is_missing(tmp_path, caplog):
    # no --model: baselines and ceilings alone (tests/evaluation/test_evaluate_models.py);
    # on a directory that is not a built dataset, one clear error
    with caplog.at_level(logging.ERROR):
        code = cellrlhf_main(
            ["evaluate", "--dataset_dir", str(tmp_path), "--out", str(tmp_path / "o")]
        )
    assert code == 2 and "manifest.json" in caplog.text


def test_unbuilt_dataset_is_a_clear_error(tmp_path, sim_model_dir, caplog):
    with caplog.at_level(logging.ERROR):
        code = cellrlhf_main(
            ["evaluate", "--dataset_dir", str(tmp_path), "--model", f"sft={sim_model_dir}"]
            + ["--out", str(tmp_path / "out")]
        )
    assert code == 2 and "manifest.json" in caplog.text


def test_predict_cli_writes_the_anndata(tmp_path, sim_model_dir, sim_dataset_dir):
    import anndata as ad

    out = tmp_path / "pred.h5ad"
    code = cellrlhf_main(
        ["predict", "--model_dir", str(sim_model_dir), "--dataset_dir", str(sim_dataset_dir)]
        + ["--cells_per_prompt", "3", "--max_prompts", "1", "--out", str(out), "--no-progress"]
    )
    assert code == 0
    pred = ad.read_h5ad(out)
    assert (pred.obs["split_kind"] != "control").sum() == 3
    assert pred.uns["cellrlhf_prediction"]["params"]["model"] == "model"


def test_predict_cli_refuses_a_non_h5ad_output(tmp_path, sim_dataset_dir, capsys):
    code = cellrlhf_main(
        ["predict", "--model_dir", str(tmp_path), "--dataset_dir", str(sim_dataset_dir)]
        + ["--out", str(tmp_path / "pred.csv")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "write predictions to an .h5ad file" in err
    assert "Traceback" not in err


def test_eval_configs_load_and_the_demo_samples_enough_cells():
    settings = {
        n: load_eval_settings(REPO / "configs" / "eval" / f"{n}.yaml")
        for n in ("tiny", "cpu_demo", "gpu")
    }
    assert settings["cpu_demo"].cells_per_prompt >= 64 and settings["cpu_demo"].max_prompts is None
    assert settings["gpu"].device_map == "auto"
    assert settings["tiny"].cells_per_prompt < 64
    assert all(s.temperature == 1.0 for s in settings.values())
    assert EvalSettings().cells_per_prompt == 512


def test_eval_settings_refuse_unknown_keys_and_bad_values(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("cells_per_prompt: 8\ncell_per_prompt: 4\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_eval_settings(path)
    with pytest.raises(ValueError, match="temperature"):
        EvalSettings(temperature=0.0)
    with pytest.raises(FileNotFoundError, match="configs/eval"):
        load_eval_settings(tmp_path / "none.yaml")
