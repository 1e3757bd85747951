import json
import sys

import pytest

from cellrlhf.pipeline import runner
from cellrlhf.pipeline.runner import StageFailed, run_pipeline, stage_argv, stage_resume_argument
from cellrlhf.pipeline.spec import load_pipeline
from cellrlhf.pipeline.stage_marker import read_markers
from cellrlhf.sft.checkpoints import write_checkpoint_marker


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


def _training_stage(tmp_path, **extra):
    entry = {"name": "sft", "command": ["sft"], "resumable": True, "output_dir": str(tmp_path)}
    return _spec(tmp_path, [{**entry, **extra}]).stage("sft")


def test_resume_argument_follows_the_trainers_completeness_rule(tmp_path):
    # plain transformers/TRL checkpoints (reward, GRPO): complete once trainer_state.json is there
    for step, complete in [(5, True), (10, True), (15, False)]:
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        if complete:
            (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    stage = _training_stage(tmp_path)
    assert stage_resume_argument(stage) == tmp_path / "checkpoint-10"
    # a marked checkpoint whose weights were damaged after the save is not passed on (the
    # trainer would refuse it), although it holds trainer_state.json
    damaged = tmp_path / "checkpoint-20"
    damaged.mkdir()
    (damaged / "trainer_state.json").write_text("{}")
    (damaged / "model.safetensors").write_bytes(b"weights")
    write_checkpoint_marker(damaged, step=20)
    (damaged / "model.safetensors").write_bytes(b"w")
    assert stage_resume_argument(stage) == tmp_path / "checkpoint-10"


def test_resume_argument_without_checkpoints_forced_or_not_resumable(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    assert stage_resume_argument(_training_stage(tmp_path)) == tmp_path / "checkpoint-3"
    assert stage_resume_argument(_training_stage(tmp_path), force=True) == "none"
    assert stage_resume_argument(_training_stage(tmp_path, resumable=False)) is None
    assert stage_resume_argument(_training_stage(tmp_path, output_dir=str(tmp_path / "x"))) is None
    assert stage_resume_argument(_training_stage(tmp_path, output_dir=None)) is None


def test_a_rerun_resumes_and_force_starts_over(tmp_path, monkeypatch):
    # training commands resume by default, so --force must say `none` to start over
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    passed = []

    def fake_argv(stage, *, resume_from=None):
        passed.append(resume_from)
        return [sys.executable, "-c", "pass"]

    monkeypatch.setattr(runner, "stage_argv", fake_argv)
    entry = {"name": "sft", "command": ["sft"], "resumable": True, "output_dir": str(tmp_path)}
    spec = _spec(tmp_path, [entry])
    run_pipeline(spec)
    run_pipeline(spec, force=True)
    assert passed == [tmp_path / "checkpoint-4", "none"]


def test_accelerate_stages_launch_the_module(tmp_path):
    spec = _spec(
        tmp_path,
        [{"name": "sft", "command": ["sft", "--config", "c.yaml"], "accelerate_config": "a.yaml"}],
    )
    argv = stage_argv(spec.stage("sft"), resume_from=tmp_path / "checkpoint-3")
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert argv[3:8] == ["--config_file", "a.yaml", "-m", "cellrlhf", "sft"]
    assert argv[-2:] == ["--resume_from_checkpoint", str(tmp_path / "checkpoint-3")]
