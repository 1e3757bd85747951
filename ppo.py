"""RLHF with TRL's PPO on perturbation fidelity (learned reward model, value model, KL to SFT).

    accelerate launch ppo.py --config configs/ppo/cpu_demo.yaml
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml ppo.py \\
        --config configs/ppo/gpu.yaml

Same as ``cellrlhf ppo``; see :mod:`cellrlhf.ppo.ppo`.
"""

import sys

from cellrlhf.cli_errors import stage_script_main

if __name__ == "__main__":
    sys.exit(stage_script_main("ppo"))
