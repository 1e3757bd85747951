"""``cellrlhf preferences``: sample, score and pair completions of an SFT model.

::

    cellrlhf preferences --config configs/reward/preferences_cpu_demo.yaml \\
        --model_name_or_path runs/demo/sft --dataset_dir runs/demo/data --output_dir runs/demo/prefs

Sampling runs on every process of an ``accelerate launch`` (chunks are split between them);
scoring and writing happen once. Every field of
:class:`~cellrlhf.reward.preference_config.PreferenceConfig` is a flag and a YAML key.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence

__all__ = ["make_parser", "cli"]

logger = logging.getLogger(__name__)


def make_parser(prog: str | None = None):
    """``TrlParser`` of :class:`PreferenceConfig` (``--config`` YAML, flags override it)."""
    from trl import TrlParser

    from cellrlhf.reward.preference_config import PreferenceConfig

    return TrlParser((PreferenceConfig,), prog=prog)


def cli(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, build the preference data, print the pair counts."""
    from cellrlhf.data.split_config import LeakageError
    from cellrlhf.reward.preferences import build_preferences

    parser = make_parser(prog="cellrlhf preferences")
    try:
        (config,) = parser.parse_args_and_config(args=None if argv is None else list(argv))
    except ValueError as err:
        print(f"cellrlhf preferences: error: {err}", file=sys.stderr)
        return 2
    try:
        manifest = build_preferences(config)
    except (FileNotFoundError, ValueError, LeakageError) as err:
        print(f"cellrlhf preferences: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"output_dir": config.output_dir, "pairs": manifest["counts"]}, indent=1))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(cli(sys.argv[1:]))
