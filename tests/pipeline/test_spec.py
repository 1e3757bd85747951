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
        (
            _raw(
                stages=[
                    {"name": "a", "command": ["x"], "needs": ["b"]},
                    {"name": "b", "command": ["y"]},
                ]
            ),
            r"stages\[0\] \('a'\): needs 'b', which comes later in the file",
        ),
        (
            _raw(
                stages=[
                    {"name": "a", "command": ["x"]},
                    {"name": "b", "command": ["y"], "needs": ["c"]},
                ]
            ),
            r"stages\[1\] \('b'\): needs 'c', which is no stage; .*\['a'\]",
        ),
        (_raw(stages=[{"name": "a", "command": ["x"], "needs": ["a"]}]), "cannot need itself"),
        (_raw(stages=[{"name": "a", "command": ["x"], "needs": "data"}]), "list of stage names"),
        ({**_raw(), "max_parallel": 0}, "'max_parallel' must be an integer >= 1"),
        ({**_raw(), "max_parallel": "2"}, "'max_parallel' must be an integer >= 1"),
        ({**_raw(), "max_parallel": True}, "'max_parallel' must be an integer >= 1"),
    ],
)
def test_bad_pipeline_files_are_explained(raw, match):
    with pytest.raises(PipelineConfigError, match=match):
        load_pipeline(raw)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="configs/pipeline"):
        load_pipeline(tmp_path / "nope.yaml")


def test_needs_default_to_every_earlier_stage():
    raw = _raw(max_parallel=3)
    raw["stages"].append({"name": "eval", "command": ["evaluate"], "needs": ["data", "data"]})
    spec = load_pipeline(raw)
    assert spec.max_parallel == 3
    assert spec.stage("data").needs is None and spec.needs_of(spec.stage("data")) == ()
    assert spec.needs_of(spec.stage("sft")) == ("data",)
    assert spec.stage("eval").needs == ("data",)
    assert load_pipeline(_raw()).max_parallel == 1
    assert (
        load_pipeline(_raw(stages=[{"name": "a", "command": ["x"], "needs": []}])).stages[0].needs
        == ()
    )
