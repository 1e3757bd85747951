"""GRPO or RLOO (TRL) on perturbation fidelity: programmatic, learned or mixed rewards.

    accelerate launch grpo.py --config configs/ppo/grpo_cpu_demo.yaml
    accelerate launch grpo.py --config configs/ppo/grpo_cpu_demo.yaml --trainer rloo
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml grpo.py \\
        --config configs/ppo/grpo_gpu.yaml

Same as ``cellrlhf grpo``; see :mod:`cellrlhf.ppo.grpo`.
"""

import sys

from cellrlhf.cli_errors import stage_script_main

if __name__ == "__main__":
    sys.exit(stage_script_main("grpo"))
