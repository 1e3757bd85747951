"""Pretrain a cell language model on cell sentences.

    accelerate launch pretrain.py --config configs/pretrain/cpu_demo.yaml

The code lives in :mod:`cellrlhf.sft.pretrain`; ``cellrlhf pretrain`` runs the same.
"""

from cellrlhf.sft.pretrain import main, make_parser

if __name__ == "__main__":
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
