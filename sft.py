"""Instruction-tune a cell language model on chat-format cell tasks (TRL ``SFTTrainer``).

    accelerate launch sft.py --config configs/sft/cpu_demo.yaml

The code lives in :mod:`cellrlhf.sft.sft`; ``cellrlhf sft`` runs the same.
"""

import sys

from cellrlhf.cli_errors import stage_script_main

if __name__ == "__main__":
    sys.exit(stage_script_main("sft"))
