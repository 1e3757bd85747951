"""Pretrain a cell language model on cell sentences.

    accelerate launch pretrain.py --config configs/pretrain/cpu_demo.yaml

The code lives in :mod:`cellrlhf.sft.pretrain`; ``cellrlhf pretrain`` runs the same.
"""

import sys

from cellrlhf.cli_errors import stage_script_main

if __name__ == "__main__":
    sys.exit(stage_script_main("pretrain"))
