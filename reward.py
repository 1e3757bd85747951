"""Train a reward model on cell preference pairs (TRL ``RewardTrainer``).

    accelerate launch reward.py --config configs/reward/cpu_demo.yaml
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml reward.py \\
        --config configs/reward/gpu.yaml

Same as ``cellrlhf reward``; see :mod:`cellrlhf.reward.train`.
"""

import sys

from cellrlhf.cli_errors import stage_script_main

if __name__ == "__main__":
    sys.exit(stage_script_main("reward"))
