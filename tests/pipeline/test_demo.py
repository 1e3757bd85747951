import logging
from pathlib import Path

from cellrlhf.pipeline.demo import (
    DEMO_PIPELINE,
    REAL_DATA_CONFIG,
    SIMULATED_DATA_CONFIG,
    choose_data_config,
)
from cellrlhf.pipeline.spec import load_pipeline


def test_offline_without_data_falls_back_to_the_labelled_simulator(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CELLRLHF_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CELLRLHF_CACHE_DIR", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING):
        config, simulated = choose_data_config(data_dir=None, offline=True)
    assert (config, simulated) == (SIMULATED_DATA_CONFIG, True)
    assert "SIMULATED" in caplog.text and "perturbench_devel.h5ad" in caplog.text


def test_real_data_in_the_data_directory_is_used(data_dir, monkeypatch, tmp_path):
    if not (data_dir / "perturbench_devel.h5ad").exists():
        import pytest

        pytest.skip("perturbench_devel.h5ad not in the data directory")
    monkeypatch.setenv("CELLRLHF_CACHE_DIR", str(tmp_path / "cache"))
    assert choose_data_config(data_dir=str(data_dir), offline=True) == (REAL_DATA_CONFIG, False)


def test_demo_pipeline_file_names_every_stage_and_existing_configs():
    root = Path(__file__).resolve().parents[2]
    spec = load_pipeline(root / DEMO_PIPELINE, overrides={"run_dir": "r"})
    names = [s.name for s in spec.stages]
    assert names == [
        *("data", "pretrain", "sft", "preferences", "reward", "ppo", "grpo", "evaluate"),
        "aggregate",
    ]
    evaluate = spec.stage("evaluate").command
    models = [evaluate[i + 1] for i, a in enumerate(evaluate) if a == "--model"]
    assert models == ["sft=r/sft", "ppo=r/ppo", "grpo=r/grpo"]
    assert evaluate[evaluate.index("--dataset_dir") + 1] == "r/data"
    assert evaluate[evaluate.index("--out") + 1] == spec.stage("evaluate").output_dir == "r/eval"
    assert "--no-last-policies" not in evaluate  # ppo/last and grpo/last are evaluated too
    aggregate = spec.stage("aggregate")
    assert aggregate.needs == ("evaluate",)
    assert aggregate.command == (
        "aggregate",
        "--eval",
        "fold0_seed0=r/eval",
        "--out",
        "r/aggregate",
    )
    for flavour in ("tiny", "cpu_demo", "gpu"):
        spec = load_pipeline(root / DEMO_PIPELINE, overrides={"run_dir": "r", "flavour": flavour})
        for stage in spec.stages:
            if "--config" not in stage.command:
                continue
            config = stage.command[stage.command.index("--config") + 1]
            assert (root / config).exists(), f"{stage.name} ({flavour}): {config} is missing"


def test_demo_runs_the_grpo_lane_beside_the_reward_lane_on_two_cores():
    from cellrlhf.pipeline.stage_graph import selected_needs, threads_per_stage

    root = Path(__file__).resolve().parents[2]
    spec = load_pipeline(root / DEMO_PIPELINE, overrides={"run_dir": "r"})
    assert spec.max_parallel == 2
    needs = selected_needs(spec, list(spec.stages))
    assert needs["grpo"] == ("data", "sft") and needs["ppo"] == ("data", "sft", "reward")
    assert needs["sft"] == ("data", "pretrain"), "stages without needs wait for all earlier ones"
    threads = threads_per_stage(needs, cpu_count=2, max_parallel=spec.max_parallel)
    # stages that run alone keep both cores; the two RL lanes get one thread each
    assert threads == {
        "data": 2,
        "pretrain": 2,
        "sft": 2,
        "preferences": 1,
        "reward": 1,
        "ppo": 1,
        "grpo": 1,
        "evaluate": 2,
        "aggregate": 2,
    }
