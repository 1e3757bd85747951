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
    elif hasattr(module, "build_parser"):
        module.build_parser().parse_args(args)
    else:
        module.make_parser().parse_args(args)


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
    for stage in spec.stages:
        assert stage.command[0] in COMMANDS, f"{stage.name}: unknown command {stage.command[0]}"
        for i, arg in enumerate(stage.command[:-1]):
            if arg == "--config":
                config = Path(stage.command[i + 1])
                assert config.exists(), f"{path.name}/{stage.name}: missing {config}"
        if stage.accelerate_config:
            assert Path(stage.accelerate_config).exists()
        _parse_stage(stage.command)
