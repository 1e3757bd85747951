"""RLHF with TRL's PPO on perturbation fidelity (learned reward model, value model, KL to SFT).

    accelerate launch ppo.py --config configs/ppo/cpu_demo.yaml
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml ppo.py \\
        --config configs/ppo/gpu.yaml

Same as ``cellrlhf ppo``; see :mod:`cellrlhf.ppo.ppo`.
"""

import logging
import sys

from cellrlhf.ppo.ppo import cli

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(cli(sys.argv[1:]))
