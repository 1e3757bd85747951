"""GRPO or RLOO (TRL) on perturbation fidelity: programmatic, learned or mixed rewards.

    accelerate launch grpo.py --config configs/ppo/grpo_cpu_demo.yaml
    accelerate launch grpo.py --config configs/ppo/grpo_cpu_demo.yaml --trainer rloo
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml grpo.py \\
        --config configs/ppo/grpo_gpu.yaml

Same as ``cellrlhf grpo``; see :mod:`cellrlhf.ppo.grpo`.
"""

import logging
import sys

from cellrlhf.ppo.grpo import cli

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(cli(sys.argv[1:]))
