"""Train a reward model on cell preference pairs (TRL ``RewardTrainer``).

    accelerate launch reward.py --config configs/reward/cpu_demo.yaml
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml reward.py \\
        --config configs/reward/gpu.yaml

Same as ``cellrlhf reward``; see :mod:`cellrlhf.reward.train`.
"""

import logging
import sys

from cellrlhf.reward.train import cli

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(cli(sys.argv[1:]))
