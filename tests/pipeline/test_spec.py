import pytest

from cellrlhf.pipeline.spec import PipelineConfigError, load_pipeline


def _raw(**changes):
    raw = {
        "run_dir": "runs/x",
        "variables": {"data": "{run_dir}/data", "size": "tiny"},
        "stages": [
            {
                "name": "data",
                "command": ["data", "build", "--output_dir", "{data}"],
                "outputs": ["{data}/manifest.json"],
            },
            {
                "name": "sft",
                "command": ["sft", "--config", "configs/sft/{size}.yaml"],
                "accelerate_config": "configs/accelerate/cpu.yaml",
                "resumable": True,
                "output_dir": "{run_dir}/sft",
            },
        ],
    }
    raw.update(changes)
    return raw


def test_placeholders_resolve_and_overrides_win():
    spec = load_pipeline(_raw(), overrides={"size": "cpu_demo", "run_dir": "runs/r"})
    assert spec.stage("data").command == ("data", "build", "--output_dir", "runs/r/data")
    assert spec.stage("data").outputs == ("runs/r/data/manifest.json",)
    sft = spec.stage("sft")
    assert sft.command[-1] == "configs/sft/cpu_demo.yaml"
    assert sft.resumable and sft.output_dir == "runs/r/sft"
    assert sft.accelerate_config == "configs/accelerate/cpu.yaml"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (_raw(run_dir=None), "run_dir"),
        (_raw(stages=[]), "non-empty list"),
        (_raw(stages=[{"name": "a"}]), "needs 'name' and 'command'"),
        (_raw(stages=[{"name": "a", "command": "data build"}]), "list of arguments"),
        (_raw(stages=[{"name": "a", "command": ["x"], "gpu": 1}]), "unknown keys"),
        (_raw(stages=[{"name": "a", "command": ["{nope}"]}]), r"\{nope\} is not defined"),
        (
            _raw(stages=[{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}]),
            "used twice",
        ),
        ({**_raw(), "stagez": []}, "unknown top-level keys"),
    ],
)
def test_bad_pipeline_files_are_explained(raw, match):
    with pytest.raises(PipelineConfigError, match=match):
        load_pipeline(raw)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="configs/pipeline"):
        load_pipeline(tmp_path / "nope.yaml")
