"""Training throughput: gene-token tokenizer vs genes-as-text, same cells, same model size.

Both modes pretrain the CPU-demo model shape (``configs/model/small.yaml``) with the CPU-demo
pretraining config (packed blocks of ``max_length`` tokens) on the same corpus:

- ``gene_tokens``: the fresh cell tokenizer (one token per gene);
- ``genes_as_text``: a byte-level BPE text tokenizer of the same natural-language size, fitted on
  the dataset's prompts with the cell sentences cut out, as a general text LM would see gene
  symbols (several pieces per gene); genes stay text (Cell2Sentence style).

Runs alternate between the modes (``--rounds``) and each step is timed on its own; the table shows
medians over all timed steps after the first of each run. Cells/s = tokens/s divided by the mean
tokens per cell under that tokenizer (EOS included).

    PYTHONPATH=. python benchmarks/bench_sft_throughput.py --dataset runs/demo/data --steps 8 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _text_lm(dataset, out: Path, vocab_size: int) -> Path:
    """A randomly initialised `small`-shaped LM with a byte-level BPE text tokenizer, saved."""
    import yaml
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from cellrlhf.sft.training_run import tokenizer_texts

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tokenizer_texts(dataset), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )
    fields = yaml.safe_load((REPO / "configs" / "model" / "small.yaml").read_text())
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **fields,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


class _StepTimer:
    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.durations.append(time.perf_counter() - timer.start)

        self.durations: list[float] = []
        self.start = 0.0
        self.callback = Callback()


def _run(mode: str, dataset_dir: Path, text_lm: Path, out: Path, steps: int, extra: list[str]):
    """One timed pretraining run; returns (step durations, tokens per step, tokens per cell)."""
    import numpy as np

    from cellrlhf.sft import training_run
    from cellrlhf.sft.pretrain import make_parser

    model = (
        ["--model_config", str(REPO / "configs" / "model" / "small.yaml")]
        if mode == "gene_tokens"
        else [
            "--model_config",
            "none",
            "--model_name_or_path",
            str(text_lm),
            "--tokenizer_mode",
            "genes_as_text",
        ]
    )
    argv = [
        "--config",
        str(REPO / "configs" / "pretrain" / "cpu_demo.yaml"),
        "--dataset_dir",
        str(dataset_dir),
        "--output_dir",
        str(out),
        *model,
        "--max_steps",
        str(steps),
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--logging_steps",
        str(steps),
        "--eval_holdout_fraction",
        "0",
        "--eval_generation_samples",
        "0",
        *extra,
    ]
    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    timer = _StepTimer()
    result = training_run.train_stage(
        "pretrain", script_args, training_args, model_args, callbacks=[timer.callback]
    )
    tokens_per_step = result.trainer._total_train_tokens / max(result.trainer.state.global_step, 1)
    tokenizer = result.trainer.processing_class
    from cellrlhf.data.layout import open_dataset_dir

    texts = open_dataset_dir(dataset_dir).load_pretrain()
    texts = texts["train"] if hasattr(texts, "keys") else texts
    sample = list(texts.select(range(min(2000, len(texts))))["text"])
    per_cell = float(np.mean([len(ids) + 1 for ids in tokenizer(sample)["input_ids"]]))
    return timer.durations, tokens_per_step, per_cell


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", required=True, type=Path, help="dataset directory (cellrlhf data build)"
    )
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per mode")
    parser.add_argument("--text-vocab-size", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "extra", nargs="*", help="more training flags (after --), e.g. --max_length 512"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("cellrlhf").setLevel(logging.WARNING)

    import torch

    from cellrlhf.data.layout import open_dataset_dir

    torch.set_num_threads(1)
    dataset = open_dataset_dir(args.dataset)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        text_lm = _text_lm(dataset, Path(tmp) / "text_lm", args.text_vocab_size)
        durations: dict[str, list[float]] = {"gene_tokens": [], "genes_as_text": []}
        for r in range(args.rounds):
            for mode in durations:
                steps, per_step, per_cell = _run(
                    mode, args.dataset, text_lm, Path(tmp) / f"{mode}{r}", args.steps, args.extra
                )
                durations[mode] += steps[1:]
                results[mode] = {"tokens_per_step": per_step, "tokens_per_cell": per_cell}
        for mode, values in durations.items():
            step = statistics.median(values)
            tokens_s = results[mode]["tokens_per_step"] / step
            results[mode].update(
                seconds_per_step=step,
                tokens_per_s=tokens_s,
                cells_per_s=tokens_s / results[mode]["tokens_per_cell"],
                timed_steps=len(values),
            )
    header = f"{'mode':<15}{'tokens/cell':>12}{'s/step':>9}{'tokens/s':>10}{'cells/s':>9}"
    print(header)
    for mode, r in results.items():
        print(
            f"{mode:<15}{r['tokens_per_cell']:>12.1f}{r['seconds_per_step']:>9.2f}"
            f"{r['tokens_per_s']:>10.0f}{r['cells_per_s']:>9.1f}"
        )
    ratio = results["gene_tokens"]["cells_per_s"] / results["genes_as_text"]["cells_per_s"]
    print(f"gene_tokens / genes_as_text cells/s: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "cells_per_s_ratio": ratio}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
