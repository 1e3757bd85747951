"""The runner records each stage's CPU time next to its wall time (load diagnostics)."""

import os

from cellrlhf.pipeline.runner import run_pipeline
from cellrlhf.pipeline.spec import load_pipeline
from cellrlhf.pipeline.stage_marker import read_markers


def test_marker_records_cpu_seconds_of_the_stage_processes(tmp_path):
    spec = load_pipeline(
        {"run_dir": str(tmp_path / "run"), "stages": [{"name": "v", "command": ["--version"]}]}
    )
    run_pipeline(spec)
    marker = read_markers(tmp_path / "run")["v"]
    # starting Python and importing cellrlhf costs CPU time; it cannot exceed wall x cores
    assert marker["cpu_seconds"] > 0
    assert marker["cpu_seconds"] <= marker["seconds"] * (os.cpu_count() or 1) + 0.05
