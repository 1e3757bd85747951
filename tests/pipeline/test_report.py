import json

import pytest

from cellrlhf.pipeline.report import SECTION_TITLES, write_report
from cellrlhf.pipeline.runner import run_pipeline
from cellrlhf.pipeline.spec import load_pipeline


@pytest.fixture()
def finished_run(tmp_path):
    run = tmp_path / "run"
    spec = load_pipeline(
        {
            "run_dir": str(run),
            "stages": [
                {"name": "data", "command": ["--version"], "output_dir": "{run_dir}/data"},
                {"name": "sft", "command": ["--version"], "output_dir": "{run_dir}/sft"},
                {"name": "eval", "command": ["--version"], "output_dir": "{run_dir}/eval"},
            ],
        }
    )
    run_pipeline(spec)
    (run / "data").mkdir()
    (run / "data" / "manifest.json").write_text(
        json.dumps({"simulated": True, "counts": {"n_cells": 1200, "n_perturbations": 12}})
    )
    (run / "sft").mkdir()
    history = [{"step": s, "loss": 3.0 - 0.2 * s} for s in range(1, 6)]
    (run / "sft" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    (run / "eval").mkdir()
    (run / "eval" / "metrics.csv").write_text("method,pearson_delta\ncontrol_mean,0.0\nsft,0.41\n")
    return spec


def test_report_has_every_section_and_nonempty_plots(finished_run):
    paths = write_report(finished_run)
    md = paths["markdown"].read_text()
    page = paths["html"].read_text()
    for title in SECTION_TITLES:
        assert f"## {title}" in md and f"<h2>{title}</h2>" in page
    assert "SIMULATED DATA" in md and "SIMULATED DATA" in page
    assert "| sft" in md and "0.41" in md
    assert "1,200" in md and "1200.0" not in md
    curves = paths["dir"] / "curves_sft.png"
    timings = paths["dir"] / "timings.png"
    assert curves.stat().st_size > 1000 and timings.stat().st_size > 1000
    assert page.count("data:image/png;base64,") == 2
    assert "-m cellrlhf --version" in md


def test_report_on_a_run_that_has_not_started(tmp_path):
    spec = load_pipeline(
        {"run_dir": str(tmp_path / "r"), "stages": [{"name": "a", "command": ["x"]}]}
    )
    md = write_report(spec)["markdown"].read_text()
    assert "No data manifest found" in md and "(not run)" in md
