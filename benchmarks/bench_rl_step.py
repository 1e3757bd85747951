"""RL step time on the CPU demo configs, phase by phase: PPO (learned reward) and GRPO (fidelity).

    OMP_NUM_THREADS=1 python benchmarks/bench_rl_step.py --data-dir ../shared/data

Builds what the demo needs under ``--work`` (reused when present): the norman_mcfaline data
set (``configs/data/norman_mcfaline.yaml``), an SFT model (the ``small`` preset from scratch,
``configs/sft/cpu_demo.yaml`` cut to ``--sft-steps``), a reward model directory (the SFT
backbone with a fresh one-label head: its scores are meaningless but it costs what a trained
one costs, which is all a timing needs). Then runs ``configs/ppo/cpu_demo.yaml`` and
``configs/ppo/grpo_cpu_demo.yaml`` for a few steps each, in one process, one after the other,
and reports the mean seconds per step of every phase (generation, reward, value, logprobs,
update, other) from ``phase_timing.json``, with the target: reward scoring under 5 % of a step.
The held-out monitor runs before the first and after the last step (its time is not part of
a step; it is reported apart).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "benchmarks" / "figures"
sys.path.insert(0, str(REPO))


def build_data(work: Path, data_dir: str) -> Path:
    from cellrlhf.cli import main

    out = work / "data"
    if not (out / "manifest.json").exists():
        code = main(
            [
                "data",
                "build",
                "--config",
                str(REPO / "configs/data/norman_mcfaline.yaml"),
                "--out",
                str(out),
                "--data-dir",
                data_dir,
                "--no-progress",
            ]
        )
        if code:
            raise SystemExit(f"data build failed ({code})")
    return out


def train_sft(work: Path, data: Path, steps: int) -> Path:
    from cellrlhf.sft.sft import main, make_parser

    out = work / "sft"
    if not (out / "cellrlhf.json").exists():
        args = make_parser().parse_args_and_config(
            [
                "--config",
                str(REPO / "configs/sft/cpu_demo.yaml"),
                "--dataset_dir",
                str(data),
                "--model_name_or_path",
                "none",
                "--model_config",
                str(REPO / "configs/model/small.yaml"),
                "--output_dir",
                str(out),
                "--max_steps",
                str(steps),
                "--eval_strategy",
                "no",
                "--save_strategy",
                "no",
                "--eval_generation_samples",
                "0",
                "--report_to",
                "none",
            ]
        )
        main(*args)
    return out


def reward_model(work: Path, sft: Path) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = work / "reward"
    if not (out / "config.json").exists():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(str(sft), num_labels=1)
        tokenizer = AutoTokenizer.from_pretrained(str(sft))
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        for name in ("gene_vocab.json", "expression_decoder.json", "data_manifest.json"):
            shutil.copy2(sft / name, out / name)
    return out


def run_rl(kind: str, work: Path, data: Path, sft: Path, reward: Path, steps: int) -> dict:
    common = [
        "--dataset_dir",
        str(data),
        "--model_name_or_path",
        str(sft),
        "--report_to",
        "none",
        "--heldout_every_steps",
        str(steps),
        "--logging_steps",
        "1",
    ]
    out = work / kind
    shutil.rmtree(out, ignore_errors=True)
    if kind == "ppo":
        from cellrlhf.ppo.ppo import main, make_parser

        args = make_parser().parse_args_and_config(
            [
                "--config",
                str(REPO / "configs/ppo/cpu_demo.yaml"),
                *common,
                "--reward_model_path",
                str(reward),
                "--output_dir",
                str(out),
                "--total_episodes",
                str(16 * steps),
            ]
        )
    else:
        from cellrlhf.ppo.grpo import main, make_parser

        args = make_parser("grpo").parse_args_and_config(
            [
                "--config",
                str(REPO / "configs/ppo/grpo_cpu_demo.yaml"),
                *common,
                "--output_dir",
                str(out),
                "--max_steps",
                str(steps),
            ]
        )
    main(*args)
    timing = json.loads((out / "phase_timing.json").read_text())
    history = json.loads((out / "heldout_eval_history.json").read_text())
    state = json.loads((out / "trainer_state.json").read_text())
    lengths = [
        row[key]
        for row in state["log_history"]
        for key in ("completions/mean_length",)
        if key in row
    ]
    return {
        "timing": timing["mean"],
        "steps": len(timing["steps"]),
        "eval_seconds": [e["metrics"]["heldout/eval_seconds"] for e in history["evaluations"]],
        "heldout_samples": history["evaluations"][0]["metrics"]["heldout/n_prompts"]
        * history["evaluations"][0]["metrics"]["heldout/samples_per_prompt"],
        "mean_completion_length": sum(lengths) / len(lengths) if lengths else None,
        "mean_answer_words": history["evaluations"][-1]["metrics"].get("heldout/mean_length"),
    }


def write_figures(results: dict, args, table: str, path: Path) -> None:
    lines = [
        "# RL step time by phase (CPU demo configs)",
        "",
        f"- Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
        f"shared with other work; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
        f"{dt.date.today().isoformat()}.",
        f"- Command: `OMP_NUM_THREADS=1 python benchmarks/bench_rl_step.py --data-dir {args.data_dir} "
        f"--sft-steps {args.sft_steps} --ppo-steps {args.ppo_steps} --grpo-steps {args.grpo_steps}`",
        "- Data: norman_mcfaline (perturbench_devel), `small` Llama (~1.8M parameters + embeddings) "
        f"instruction-tuned from scratch for {args.sft_steps} steps; reward model = SFT backbone with a "
        "fresh score head (same cost as a trained one).",
        "- PPO (`configs/ppo/cpu_demo.yaml`): 16 prompts per step, response_length 48, 2 PPO epochs x 2 "
        "minibatches, reward model + value model + frozen reference. GRPO "
        "(`configs/ppo/grpo_cpu_demo.yaml`): 4 prompts x 16 answers per step, max_completion_length 48, "
        "programmatic group fidelity reward, beta 0.04 (reference log-probs).",
        "",
        table,
        "",
    ]
    for name, r in results.items():
        t = r["timing"]
        verdict = "met" if t.get("reward_fraction", 1) < 0.05 else "MISSED"
        lines.append(
            f"- {name}: {r['steps']} steps; reward {100 * t.get('reward_fraction', 0):.1f} % of a step "
            f"(target < 5 %: {verdict}); held-out monitor {r['heldout_samples']:.0f} answers in "
            + ", ".join(f"{s:.1f}" for s in r["eval_seconds"])
            + " s per evaluation (outside the step time)"
            + (
                f"; mean completion {r['mean_completion_length']:.1f} tokens"
                if r["mean_completion_length"]
                else ""
            )
            + "."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("CELLRLHF_DATA_DIR", "../shared/data"))
    parser.add_argument("--work", default=str(REPO / "runs" / "bench_rl"))
    parser.add_argument("--sft-steps", type=int, default=400)
    parser.add_argument("--ppo-steps", type=int, default=8)
    parser.add_argument("--grpo-steps", type=int, default=8)
    parser.add_argument("--figures", default=str(FIGURES / "ppo.md"))
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from cellrlhf.ppo.phase_timing import format_timing_table

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = build_data(work, args.data_dir)
    sft = train_sft(work, data, args.sft_steps)
    reward = reward_model(work, sft)
    results = {
        "PPO (learned reward)": run_rl("ppo", work, data, sft, reward, args.ppo_steps),
        "GRPO (fidelity reward)": run_rl("grpo", work, data, sft, reward, args.grpo_steps),
    }
    table = format_timing_table({k: v["timing"] for k, v in results.items()})
    print(table)
    write_figures(results, args, table, Path(args.figures))
    print(f"figures written to {args.figures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
