"""``--help`` of the training stages leads with ``--config`` and cellrlhf's own options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _parsers():
    from cellrlhf.ppo.grpo import make_parser as grpo
    from cellrlhf.ppo.ppo import make_parser as ppo
    from cellrlhf.reward.train import make_parser as reward
    from cellrlhf.sft.pretrain import make_parser as pretrain
    from cellrlhf.sft.sft import make_parser as sft

    return {
        "pretrain": (pretrain(prog="pretrain.py"), "dataset_dir"),
        "sft": (sft(prog="sft.py"), "perturbation_dropout"),
        "reward": (reward(prog="reward.py"), "preferences_dir"),
        "ppo": (ppo(prog="ppo.py"), "heldout_every_steps"),
        "grpo": (grpo(prog="grpo.py"), "heldout_every_steps"),
    }


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_help_leads_with_config_and_cell_options():
    for stage, (parser, own_option) in _parsers().items():
        text = parser.format_help()
        head = "\n".join(text.splitlines()[:6])
        assert "--config FILE.yaml" in head and "YAML file of option values" in head, stage
        own = text.index("cellrlhf options (")
        inherited = text.index("inherited options (")
        assert own < inherited, stage
        assert f"--{own_option} " in text[own:inherited], stage
        # TrainingArguments' options come after cellrlhf's
        assert "--learning_rate " in text[inherited:], stage
        assert "--learning_rate " not in text[own:inherited], stage
        assert "(default: ==SUPPRESS==)" not in text


def test_own_fields_leave_inherited_defaults_inherited():
    from transformers import TrainingArguments

    from cellrlhf.cli_help import own_fields
    from cellrlhf.sft.configs import CellSFTConfig

    own = own_fields(CellSFTConfig)
    assert "perturbation_dropout" in own
    assert not own & {f for f in TrainingArguments.__dataclass_fields__}


def test_parsing_still_reads_the_config(tmp_path):
    from cellrlhf.sft.sft import make_parser

    config = tmp_path / "c.yaml"
    config.write_text("dataset_dir: /data/x\noutput_dir: /tmp/out\nperturbation_dropout: 0.3\n")
    script, training, _model = make_parser().parse_args_and_config(
        ["--config", str(config), "--perturbation_dropout", "0.2"]
    )
    assert script.dataset_dir == "/data/x" and training.perturbation_dropout == 0.2


@pytest.mark.slow
def test_stage_script_help_in_a_subprocess():
    out = subprocess.run(
        [sys.executable, str(ROOT / "sft.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("usage:") and "[--config FILE.yaml]" in lines[0]
    assert any("--config FILE.yaml" in line for line in lines[:5])


def test_a_training_config_with_a_typo_names_the_close_option(tmp_path, capsys):
    from cellrlhf.sft.sft import make_parser

    config = tmp_path / "c.yaml"
    config.write_text("dataset_dir: /data/x\nlearning_rat: 0.1\n")
    with pytest.raises(SystemExit) as exit_:
        make_parser(prog="sft.py").parse_args_and_config([f"--config={config}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert f"{config}: unknown key(s) learning_rat; remove or rename them (did you mean " in err
    assert "learning_rate" in err and "`sft.py --help` lists every option" in err


def _plain_parser():
    from dataclasses import dataclass, field

    from cellrlhf.cli_help import CellTrlParser, NegatableFlag, RepeatableOption

    @dataclass
    class Options:
        item: list[str] = field(default_factory=list, metadata={"action": RepeatableOption})
        check: bool | None = field(default=None, metadata={"action": NegatableFlag})

    return CellTrlParser((Options,), prog="p")


@pytest.mark.parametrize(
    ("argv", "items"),
    [
        ([], ["y"]),
        (["--item", "a"], ["a"]),
        (["--item", "a", "--item", "b"], ["a", "b"]),
        (["--item", "a", "b", "--item", "c"], ["a", "b", "c"]),
    ],
)
def test_a_repeated_option_replaces_the_config_list_and_adds_up(tmp_path, argv, items):
    config = tmp_path / "c.yaml"
    config.write_text("item: [y]\n")
    (options,) = _plain_parser().parse_args_and_config(["--config", str(config), *argv])
    assert options.item == items


@pytest.mark.parametrize(
    ("argv", "value"),
    [
        ([], None),
        (["--check"], True),
        (["--check", "yes"], True),
        (["--check", "false"], False),
        (["--no_check"], False),
        (["--no-check"], False),
    ],
)
def test_a_negatable_flag_has_three_states(argv, value):
    (options,) = _plain_parser().parse_args_and_config(argv)
    assert options.check is value


def test_options_dataclass_mirrors_a_frozen_settings_class():
    import dataclasses

    from cellrlhf.cli_help import attribute_help, options_dataclass

    @dataclasses.dataclass(frozen=True)
    class Settings:
        """Settings.

        Attributes
        ----------
        names
            Which ``names``, see :func:`~pkg.mod.thing`.
        low, high
            The
            bounds.

        Notes
        -----
        not an attribute
        """

        names: tuple[str, ...] = ("a", "b")
        low: int = 0
        high: float | None = None

    assert attribute_help(Settings) == {
        "names": "Which names, see thing.",
        "low": "The bounds.",
        "high": "The bounds.",
    }
    options_type = options_dataclass(Settings, name="SettingsOptions")
    assert [(f.name, f.type) for f in dataclasses.fields(options_type)] == [
        ("names", list[str]),
        ("low", int),
        ("high", float | None),
    ]
    from cellrlhf.cli_help import CellTrlParser

    (options,) = CellTrlParser((options_type,)).parse_args_and_config(
        ["--names", "c", "--low", "2"]
    )
    assert Settings(**{**dataclasses.asdict(options), "names": tuple(options.names)}) == Settings(
        names=("c",), low=2
    )
    assert options_type().names == ["a", "b"] and options_type().names is not options_type().names


def _data_file_parser():
    from dataclasses import dataclass, field

    from cellrlhf.cli_help import CellArgumentParser

    @dataclass
    class Options:
        config: str = field(metadata={"help": "the data file"})
        source: str = field(default="here", metadata={"positional": True})
        level: int = 1

    return CellArgumentParser((Options,), prog="p")


def test_a_data_file_config_is_the_command_s_own_field(tmp_path):
    data = tmp_path / "data.yaml"
    data.write_text("level: 7\nsource: there\n")  # never read as option values
    parser = _data_file_parser()
    (options,) = parser.parse_args_and_config([f"--config={data}", "--level", "2"])
    assert (options.config, options.source, options.level) == (str(data), "here", 2)
    (options,) = parser.parse_args_and_config(["src", "--config", "d.yaml"])
    assert (options.config, options.source, options.level) == ("d.yaml", "src", 1)
    help_text = parser.format_help()
    start, rest = help_text.split("start here:", 1)[1].split("\n\n", 1)
    assert "--config CONFIG" in start and "the data file" in start
    assert "--config" not in rest and "SOURCE" in rest and "--level" in rest


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "d.yaml", "--levle=2"], "unrecognized arguments: --levle=2 (`p --help`"),
        (["--level", "2"], "the following arguments are required: --config"),
    ],
)
def test_a_data_file_parser_refuses_unknown_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _data_file_parser().parse_args_and_config(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_positional_field_may_come_from_the_config_file(tmp_path):
    from dataclasses import dataclass, field

    from cellrlhf.cli_help import CellTrlParser

    @dataclass
    class Options:
        path: str = field(metadata={"positional": True})

    config = tmp_path / "c.yaml"
    config.write_text("path: from/yaml\n")
    parser = CellTrlParser((Options,), prog="p")
    assert parser.parse_args_and_config(["given"])[0].path == "given"
    assert parser.parse_args_and_config(["--config", str(config)])[0].path == "from/yaml"
    assert parser.parse_args_and_config(["--config", str(config), "x"])[0].path == "x"
