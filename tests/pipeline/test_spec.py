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


def _swept(stages, **changes):
    raw = {
        "run_dir": "r",
        "sweep": {"folds": 2, "seeds": [0, 1]},
        "variables": {"fold_dir": "{run_dir}/fold{fold}"},
        "stages": stages,
    }
    raw.update(changes)
    return load_pipeline(raw)


SWEPT_STAGES = [
    {"name": "data", "per": "fold", "command": ["data", "--fold", "{fold}", "--out", "{fold_dir}"]},
    {"name": "pretrain", "per": "fold", "command": ["pretrain", "{fold_dir}"]},
    {
        "name": "sft",
        "per": ["seed", "fold"],  # any order; names carry fold first
        "needs": ["pretrain"],
        "command": ["sft", "--seed", "{seed}"],
        "output_dir": "{fold_dir}/sft_seed{seed}",
    },
    {"name": "evaluate", "per": ["fold", "seed"], "command": ["evaluate", "--seed", "{seed}"]},
    {
        "name": "aggregate",
        "needs": ["evaluate"],
        "command": [
            "aggregate",
            {"foreach": ["fold", "seed"], "args": ["--eval", "fold{fold}_seed{seed}={fold_dir}"]},
            "--out",
            "{run_dir}/aggregate",
        ],
    },
]


def test_a_sweep_expands_stages_names_needs_and_commands():
    spec = _swept(SWEPT_STAGES)
    assert spec.sweep == {"fold": (0, 1), "seed": (0, 1)}
    got = {s.name: s.needs for s in spec.stages}
    assert got == {
        "data_f0": (),
        "data_f1": (),
        "pretrain_f0": ("data_f0",),  # no needs: every earlier stage of its own fold
        "pretrain_f1": ("data_f1",),
        "sft_f0_s0": ("pretrain_f0",),
        "sft_f0_s1": ("pretrain_f0",),
        "sft_f1_s0": ("pretrain_f1",),
        "sft_f1_s1": ("pretrain_f1",),
        "evaluate_f0_s0": ("data_f0", "pretrain_f0", "sft_f0_s0"),
        "evaluate_f0_s1": ("data_f0", "pretrain_f0", "sft_f0_s1"),
        "evaluate_f1_s0": ("data_f1", "pretrain_f1", "sft_f1_s0"),
        "evaluate_f1_s1": ("data_f1", "pretrain_f1", "sft_f1_s1"),
        "aggregate": ("evaluate_f0_s0", "evaluate_f0_s1", "evaluate_f1_s0", "evaluate_f1_s1"),
    }
    assert spec.stage("data_f1").command == ("data", "--fold", "1", "--out", "r/fold1")
    sft = spec.stage("sft_f1_s0")
    assert sft.command == ("sft", "--seed", "0") and sft.output_dir == "r/fold1/sft_seed0"
    assert sft.template == "sft" and sft.point == (("fold", 1), ("seed", 0))
    assert spec.stage("aggregate").command == (
        "aggregate",
        *("--eval", "fold0_seed0=r/fold0", "--eval", "fold0_seed1=r/fold0"),
        *("--eval", "fold1_seed0=r/fold1", "--eval", "fold1_seed1=r/fold1"),
        *("--out", "r/aggregate"),
    )
    assert spec.stage("aggregate").point == ()
    assert spec.variables["fold_dir"] == "r/fold{fold}"


def test_per_fold_stage_needing_a_per_seed_stage_waits_for_every_seed_of_its_fold():
    spec = _swept(
        [
            {"name": "train", "per": ["fold", "seed"], "command": ["x", "{fold}{seed}"]},
            {"name": "pick", "per": "fold", "needs": ["train"], "command": ["y"]},
            {"name": "by_seed", "per": "seed", "needs": ["train"], "command": ["z"]},
            {"name": "named_{fold}", "per": "fold", "needs": [], "command": ["w"]},
        ],
        sweep={"folds": [3, 5], "seeds": [7]},
    )
    assert spec.stage("pick_f5").needs == ("train_f5_s7",)
    assert spec.stage("by_seed_s7").needs == ("train_f3_s7", "train_f5_s7")
    assert spec.stage("train_f5_s7").command == ("x", "57")
    assert [s.name for s in spec.stages][-2:] == ["named_3", "named_5"]


def test_a_pipeline_without_sweep_is_unchanged_by_expansion():
    spec = load_pipeline(_raw())
    assert [s.name for s in spec.stages] == ["data", "sft"] and spec.sweep == {}
    assert spec.stage("sft").needs is None and spec.stage("sft").point == ()


@pytest.mark.parametrize(
    ("stages", "changes", "match"),
    [
        (
            [{"name": "a", "per": "folds", "command": ["x"]}],
            {},
            r"'per: folds' is not a sweep axis",
        ),
        ([{"name": "a", "per": 3, "command": ["x"]}], {}, r"'per' must be fold, seed or"),
        ([{"name": "a", "per": "seed", "command": ["x"]}], {"sweep": {"folds": 2}}, "with seeds"),
        ([{"name": "a", "command": ["{fold}"]}], {}, r"uses \{fold\} but does not run per fold"),
        (
            [{"name": "a", "per": "fold", "command": ["--seed", "{seed}"]}],
            {},
            r"stages\[0\] \('a'\): uses \{seed\} but does not run per seed",
        ),
        (
            [{"name": "a", "per": "fold", "command": ["x"]}],
            {"sweep": None, "variables": {}},
            "needs a top-level sweep with folds",
        ),
        (
            [{"name": "a", "command": ["{seed}"]}],
            {"sweep": None, "variables": {}},
            r"\{seed\}, which is defined only in a sweep",
        ),
        ([{"name": "a", "command": ["x"]}], {"sweep": {"folds": 0}}, "sweep.folds must be >= 1"),
        ([{"name": "a", "command": ["x"]}], {"sweep": {"seeds": 3}}, "sweep.seeds must be a list"),
        ([{"name": "a", "command": ["x"]}], {"sweep": {"seeds": [1, 1]}}, "a value twice"),
        ([{"name": "a", "command": ["x"]}], {"sweep": {"fold": 2}}, "unknown sweep keys"),
        ([{"name": "a", "command": ["x"]}], {"variables": {"seed": "1"}}, "is a sweep axis"),
        (
            [{"name": "a", "per": "fold", "command": [{"foreach": "fold", "args": ["x"]}]}],
            {},
            "foreach over.*which the stage itself runs per",
        ),
        ([{"name": "a", "command": [{"foreach": "fold"}]}], {}, r"must be \{foreach"),
        (
            [{"name": "a_f0", "command": ["x"]}, {"name": "a", "per": "fold", "command": ["y"]}],
            {},
            "'a_f0' is used twice",
        ),
        (
            [{"name": "a", "command": ["x"]}],
            {"variables": {"p": "{q}", "q": "{p}"}},
            "in a circle: p -> q -> p",
        ),
    ],
)
def test_bad_sweeps_are_explained(stages, changes, match):
    with pytest.raises(PipelineConfigError, match=match):
        _swept(stages, **changes)
