import json
import sys

import pytest

from cellrlhf.pipeline.runner import StageFailed, latest_checkpoint, run_pipeline, stage_argv
from cellrlhf.pipeline.spec import load_pipeline
from cellrlhf.pipeline.stage_marker import read_markers


def _spec(tmp_path, stages):
    return load_pipeline({"run_dir": str(tmp_path / "run"), "stages": stages})


def test_finished_stages_are_skipped_until_forced_or_changed(tmp_path):
    spec = _spec(tmp_path, [{"name": "version", "command": ["--version"]}])
    ran = []
    first = run_pipeline(spec, on_stage_end=lambda s, t, skipped: ran.append(skipped))
    assert set(first) == {"version"} and ran == [False]
    assert run_pipeline(spec, on_stage_end=lambda s, t, skipped: ran.append(skipped)) == {}
    assert ran == [False, True]
    assert set(run_pipeline(spec, force=True)) == {"version"}
    changed = _spec(tmp_path, [{"name": "version", "command": ["-V"]}])
    assert set(run_pipeline(changed)) == {"version"}, "a changed command must re-run"
    markers = read_markers(tmp_path / "run")
    assert markers["version"]["stage"]["command"] == ["-V"]
    log = (tmp_path / "run" / "logs" / "version.log").read_text()
    assert "cellrlhf 0.1.0" in log


def test_failure_names_stage_and_log_and_writes_no_marker(tmp_path):
    spec = _spec(tmp_path, [{"name": "bad", "command": ["no-such-command"]}])
    with pytest.raises(StageFailed, match=r"stage 'bad' failed \(exit 2\).*bad.log"):
        run_pipeline(spec)
    assert read_markers(tmp_path / "run") == {}


def test_declared_outputs_must_exist(tmp_path):
    spec = _spec(
        tmp_path,
        [{"name": "v", "command": ["--version"], "outputs": [str(tmp_path / "missing.json")]}],
    )
    with pytest.raises(StageFailed, match="did not write"):
        run_pipeline(spec)


def test_latest_checkpoint_ignores_incomplete(tmp_path):
    for step, complete in [(5, True), (10, True), (15, False)]:
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        if complete:
            (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert latest_checkpoint(tmp_path).name == "checkpoint-10"
    assert latest_checkpoint(tmp_path / "none") is None


def test_accelerate_stages_launch_the_module(tmp_path):
    spec = _spec(
        tmp_path,
        [{"name": "sft", "command": ["sft", "--config", "c.yaml"], "accelerate_config": "a.yaml"}],
    )
    argv = stage_argv(spec.stage("sft"), resume_from=tmp_path / "checkpoint-3")
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert argv[3:8] == ["--config_file", "a.yaml", "-m", "cellrlhf", "sft"]
    assert argv[-2:] == ["--resume_from_checkpoint", str(tmp_path / "checkpoint-3")]
