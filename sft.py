"""Instruction-tune a cell language model on chat-format cell tasks (TRL ``SFTTrainer``).

    accelerate launch sft.py --config configs/sft/cpu_demo.yaml

The code lives in :mod:`cellrlhf.sft.sft`; ``cellrlhf sft`` runs the same.
"""

from cellrlhf.sft.sft import main, make_parser

if __name__ == "__main__":
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
