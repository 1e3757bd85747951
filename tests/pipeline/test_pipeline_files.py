"""Every pipeline file in configs/pipeline loads, and each stage's command line - with the
pipeline's variables filled in - parses with that stage's own parser, configs included, so a
typo in a pipeline file or a renamed flag fails here and not hours into a run."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from cellrlhf.cli import COMMANDS
from cellrlhf.pipeline.spec import load_pipeline

REPO = Path(__file__).resolve().parents[2]
PIPELINES = sorted((REPO / "configs" / "pipeline").glob("*.yaml"))
# flavours the demo pipeline can take on a CPU machine (gpu configs set bf16, checked elsewhere)
CPU_FLAVOURS = ("tiny", "cpu_demo")
# stage commands whose parser is a TrlParser (``--config`` YAML + flags)
TRL_PARSED = {"pretrain", "sft", "preferences", "reward", "ppo"}


def _parse_stage(argv: list[str]) -> None:
    name, args = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    if name == "grpo":
        from cellrlhf.ppo.grpo import trainer_choice

        module.make_parser(trainer_choice(args)).parse_args_and_config(args)
    elif name in TRL_PARSED:
        module.make_parser().parse_args_and_config(args)
    elif name == "data":  # ``data <subcommand> ...``: one parser per subcommand
        module.make_parser(args[0]).parse_args_and_config(args[1:])
    else:  # a TrlParser reads --config itself; plain argparse parsers parse_args
        parser = module.make_parser()
        getattr(parser, "parse_args_and_config", parser.parse_args)(args)


def _cases():
    for path in PIPELINES:
        flavours = CPU_FLAVOURS if path.stem == "demo" else (None,)
        for flavour in flavours:
            yield pytest.param(path, flavour, id=f"{path.stem}-{flavour or 'default'}")


@pytest.mark.parametrize(("path", "flavour"), list(_cases()))
def test_every_stage_command_parses(path, flavour, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # configs are resolved against the repository root
    overrides = {"run_dir": str(tmp_path / "run")}
    if flavour:
        overrides["flavour"] = flavour
    spec = load_pipeline(path, overrides=overrides)
    assert spec.stages, f"{path.name} has no stages"
    assert len({s.name for s in spec.stages}) == len(spec.stages), "stage names must be unique"
    parsed = set()
    for stage in spec.stages:
        if stage.template in parsed:  # other folds / seeds differ only in numbers and paths
            continue
        parsed.add(stage.template)
        assert stage.command[0] in COMMANDS, f"{stage.name}: unknown command {stage.command[0]}"
        for i, arg in enumerate(stage.command[:-1]):
            if arg == "--config":
                config = Path(stage.command[i + 1])
                assert config.exists(), f"{path.name}/{stage.name}: missing {config}"
        if stage.accelerate_config:
            assert Path(stage.accelerate_config).exists()
        _parse_stage(stage.command)


# one pipeline file per benchmark setting (issue 14): its data config and the folds it sweeps
SWEPT = {
    "norman_unseen_single": "configs/data/norman_unseen_single_folds.yaml",
    "norman_unseen_combo": "configs/data/norman_unseen_combo_folds.yaml",
    "mcfaline_unseen_pair": "configs/data/mcfaline_unseen_pair.yaml",
}


def _arg(command: tuple[str, ...], flag: str) -> str:
    return command[command.index(flag) + 1]


@pytest.mark.parametrize("name", sorted(SWEPT))
def test_benchmark_files_sweep_every_fold_and_three_seeds(name, monkeypatch):
    import yaml

    monkeypatch.chdir(REPO)
    spec = load_pipeline(REPO / "configs" / "pipeline" / f"{name}.yaml", overrides={"run_dir": "R"})
    folds = yaml.safe_load((REPO / SWEPT[name]).read_text())["split"]["folds"]
    assert spec.sweep == {"fold": tuple(range(folds)), "seed": (0, 1, 2)}
    per_fold = ("data", "pretrain")
    per_run = ("sft", "grpo", "preferences", "reward", "ppo", "evaluate")
    expected = [f"{s}_f{f}" for s in per_fold for f in range(folds)]
    expected += [f"{s}_f{f}_s{k}" for s in per_run for f in range(folds) for k in range(3)]
    assert [s.name for s in spec.stages] == [*expected, "aggregate"]
    for fold in range(folds):
        data = spec.stage(f"data_f{fold}").command
        assert _arg(data, "--config") == SWEPT[name] and _arg(data, "--fold") == str(fold)
        for seed in range(3):
            run = f"R/fold{fold}/seed{seed}"
            for stage in ("sft", "grpo", "ppo"):
                command = spec.stage(f"{stage}_f{fold}_s{seed}").command
                assert _arg(command, "--seed") == str(seed), stage
                assert _arg(command, "--dataset_dir") == f"R/fold{fold}/data", stage
                assert _arg(command, "--output_dir") == f"{run}/{stage}", stage
            assert spec.stage(f"sft_f{fold}_s{seed}").needs == (
                f"data_f{fold}",
                f"pretrain_f{fold}",
            )
            assert spec.stage(f"ppo_f{fold}_s{seed}").needs == (
                f"data_f{fold}",
                f"sft_f{fold}_s{seed}",
                f"reward_f{fold}_s{seed}",
            )
            evaluate = spec.stage(f"evaluate_f{fold}_s{seed}").command
            models = [evaluate[i + 1] for i, a in enumerate(evaluate) if a == "--model"]
            assert models == [f"sft={run}/sft", f"grpo={run}/grpo", f"ppo={run}/ppo"]
            assert "--no-last-policies" not in evaluate  # grpo_last / ppo_last are evaluated
    aggregate = spec.stage("aggregate")
    evaluations = [s for s in spec.stages if s.template == "evaluate"]
    assert aggregate.needs == tuple(s.name for s in evaluations)
    labels = [aggregate.command[i + 1] for i, a in enumerate(aggregate.command) if a == "--eval"]
    assert labels == [
        f"fold{dict(s.point)['fold']}_seed{dict(s.point)['seed']}={s.output_dir}"
        for s in evaluations
    ]
