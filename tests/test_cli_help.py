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
