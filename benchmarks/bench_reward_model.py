"""Learned reward model on real perturbation data, evaluated on held-out perturbations.

The whole chain, each stage through its own ``cellrlhf`` command (outputs reused when present):

1. ``cellrlhf data build``: the Norman 2019 part of ``perturbench_devel.h5ad``, unseen-single
   split (held-out single targets and every combination containing one go to test);
2. ``cellrlhf sft``: a small Llama from scratch on the perturbation-response task;
3. ``cellrlhf preferences``: N completions per RL prompt, group-aware scores, pairs + hard
   negatives (train split -> training pairs, test split -> evaluation pairs);
4. ``cellrlhf reward``: reward models side by side: all pair kinds vs sampled pairs only (no
   hard negatives), with and without TRL's margin loss (margin = score difference), and with
   twice the pairs (a second sample); the untrained model (SFT backbone, new head) as floor.
5. Diagnostics from the second sample: the reward models on SEEN perturbations (new
   completions), and the reliability of the labels themselves (each completion re-scored as a
   member of an independent group).

Prints one table (pairwise accuracy overall and per kind, Spearman of the reward-model score
with the true group-aware score over held-out completions, pooled and within prompt) and
writes it to ``<work>/reward_model_table.md`` (and ``--table``) as Markdown.

    python benchmarks/bench_reward_model.py --data-dir ../shared/data --work runs/bench_rm
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing


def run(args: list[str], log: Path, env: dict) -> float:
    """Run ``python -m cellrlhf <args>``; returns seconds. Output goes to ``log``."""
    start = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.run(
            [sys.executable, "-m", "cellrlhf", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if proc.returncode != 0:
        raise SystemExit(f"`cellrlhf {' '.join(args[:2])}` failed; see {log}")
    return time.perf_counter() - start


def untrained_eval(sft: Path, prefs: Path) -> dict:
    """Floor: the SFT backbone with a fresh score head, evaluated like the trained models."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cellrlhf.reward.preference_files import load_preferences
    from cellrlhf.reward.reward_model_eval import evaluate_reward_model

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(sft, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(sft)
    model.config.pad_token_id = tokenizer.pad_token_id
    pairs, completions = load_preferences(prefs, "test")
    result = evaluate_reward_model(model, tokenizer, pairs, completions, progress=False)
    return {k: v for k, v in result.items() if not k.startswith("_")}


def write_two_sample_pairs(prefs_a: Path, prefs_b: Path, out: Path) -> None:
    """A preference directory training on both samples' train pairs (test pairs: sample A's)."""
    import shutil

    from datasets import DatasetDict, concatenate_datasets, load_from_disk

    a = load_from_disk(str(prefs_a / "pairs"))
    b = load_from_disk(str(prefs_b / "pairs"))
    DatasetDict(
        {"train": concatenate_datasets([a["train"], b["train"]]), "test": a["test"]}
    ).save_to_disk(str(out / "pairs"))
    shutil.copytree(prefs_a / "completions", out / "completions", dirs_exist_ok=True)
    shutil.copyfile(prefs_a / "manifest.json", out / "manifest.json")


def label_reliability(prefs_a: Path, prefs_b: Path, data: Path, split: str = "test") -> dict:
    """How much of a completion's score belongs to the completion, not to its group.

    Every completion of sample A (and both answers of each sampled pair) is scored again as one
    more member of an independent group of the same prompt (sample B, another seed). The rank
    correlation of the two scores, and how often a pair keeps its order, bound what any reward
    model can reach against these labels.
    """
    import numpy as np
    from datasets import load_from_disk

    from cellrlhf.cell2text.decoder import ExpressionDecoder
    from cellrlhf.reward.preference_config import PreferenceConfig
    from cellrlhf.reward.preference_files import load_preferences
    from cellrlhf.reward.reward_model_eval import spearman, within_group_spearman

    config = json.loads((prefs_a / "manifest.json").read_text())["config"]
    reward = PreferenceConfig(**{**config, "progress": False}).reward(ExpressionDecoder.load(data))
    rows = load_from_disk(str(data / "rl"))[split]
    by_pert = {p: i for i, p in enumerate(rows["perturbation"])}
    pairs_a, comp_a = load_preferences(prefs_a, split)
    _, comp_b = load_preferences(prefs_b, split)
    group_b: dict[str, list[str]] = {}
    for pert, completion in zip(comp_b["perturbation"], comp_b["completion"], strict=True):
        group_b.setdefault(pert, []).append(completion[0]["content"])

    def rescore(perts: list[str], texts: list[str]) -> np.ndarray:
        keys, answers, index = [], [], []
        for k, (pert, text) in enumerate(zip(perts, texts, strict=True)):
            members = [*group_b[pert], text]
            keys += [k] * len(members)
            answers += members
            index += [by_pert[pert]] * len(members)

        def column(name):
            values = list(rows[name])
            return [values[i] for i in index]

        out = reward.score(
            keys,
            answers,
            reference_perturbed=column("reference_perturbed"),
            reference_control=column("reference_control"),
            decoded_control=column("decoded_control"),
            reference_sentences=column("reference_sentences"),
        ).reward
        return out[np.cumsum([len(group_b[p]) + 1 for p in perts]) - 1]

    perts = list(comp_a["perturbation"])
    s_a = np.asarray(list(comp_a["score"]), dtype=float)
    s_b = rescore(perts, [c[0]["content"] for c in comp_a["completion"]])
    sampled = pairs_a.filter(lambda k: k == "sampled", input_columns="pair_kind")
    p_perts = list(sampled["perturbation"])
    chosen_b = rescore(p_perts, [c[0]["content"] for c in sampled["chosen"]])
    rejected_b = rescore(p_perts, [c[0]["content"] for c in sampled["rejected"]])
    within, _ = within_group_spearman(s_a, s_b, list(comp_a["prompt_id"]))
    return {
        "spearman": spearman(s_a, s_b),
        "spearman_within_prompt": within,
        "sampled_pair_agreement": float(np.mean(chosen_b > rejected_b)),
    }


def fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("CELLRLHF_DATA_DIR", "../shared/data"))
    parser.add_argument(
        "--work", default="runs/bench_reward_model", help="where every stage writes"
    )
    parser.add_argument("--threads", type=int, default=2, help="OMP threads per process")
    parser.add_argument("--sft-epochs", type=int, default=3)
    parser.add_argument("--num-completions", type=int, default=64)
    parser.add_argument("--rm-epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table", default=None, help="also write the Markdown table here")
    args = parser.parse_args()

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    seconds: dict[str, float] = {}
    data, sft = work / "data", work / "sft"
    prefs, prefs_b, prefs_2x = work / "preferences", work / "preferences_seed_b", work / "prefs_2x"

    def stage(name: str, done: Path, argv: list[str]) -> None:
        if not done.exists():
            seconds[name] = run(argv, work / f"{name.replace(' ', '_')}.log", env)

    stage(
        "data",
        data / "manifest.json",
        ["data", "build", "--config", str(REPO / "configs/data/norman_mcfaline.yaml")]
        + ["--out", str(data), "--data-dir", args.data_dir, "--seed", str(args.seed)]
        + ["--set", "source.obs_query=dataset == 'norman19'"]
        + ["--set", "split.combos_with_test_targets=test", "--no-progress"],
    )
    stage(
        "sft",
        sft / "cellrlhf.json",
        ["sft", "--config", str(REPO / "configs/sft/cpu_demo.yaml"), "--dataset_dir", str(data)]
        + ["--model_name_or_path", "none", "--model_config", str(REPO / "configs/model/small.yaml")]
        + ["--output_dir", str(sft), "--tasks", "perturbation_response"]
        + ["--num_train_epochs", str(args.sft_epochs), "--eval_strategy", "no"]
        + ["--save_strategy", "no", "--eval_generation_samples", "0", "--report_to", "none"]
        + ["--disable_tqdm", "true", "--seed", str(args.seed)],
    )
    for name, out, seed in (
        ("preferences", prefs, args.seed),
        ("preferences_b", prefs_b, args.seed + 1),
    ):
        stage(
            name,
            out / "manifest.json",
            ["preferences", "--config", str(REPO / "configs/reward/preferences_cpu_demo.yaml")]
            + [
                "--model_name_or_path",
                str(sft),
                "--dataset_dir",
                str(data),
                "--output_dir",
                str(out),
            ]
            + ["--num_completions", str(args.num_completions), "--seed", str(seed)]
            + ["--progress", "false"],
        )
    if not (prefs_2x / "manifest.json").exists():
        write_two_sample_pairs(prefs, prefs_b, prefs_2x)

    margin = ["--score_margin_scale", "1.0"]
    sampled = ["--pair_kinds", "sampled"]
    variants = {
        "all pair kinds": ("all", prefs, []),
        "sampled pairs only": ("sampled", prefs, sampled),
        "all pair kinds + margin loss": ("all_margin", prefs, margin),
        "sampled only + margin loss": ("sampled_margin", prefs, sampled + margin),
        "sampled only + margin loss, 2x pairs (two samples)": (
            "2x_sampled_margin",
            prefs_2x,
            sampled + margin,
        ),
    }
    results: dict[str, dict] = {}
    for name, (tag, pairs_dir, extra) in variants.items():
        out = work / f"reward_{tag}"
        stage(
            f"reward {tag}",
            out / "reward_model_eval.json",
            ["reward", "--config", str(REPO / "configs/reward/cpu_demo.yaml")]
            + ["--model_name_or_path", str(sft), "--preferences_dir", str(pairs_dir)]
            + ["--output_dir", str(out), "--num_train_epochs", str(args.rm_epochs)]
            + ["--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]
            + ["--seed", str(args.seed), *extra],
        )
        results[name] = json.loads((out / "reward_model_eval.json").read_text())
    results["untrained (SFT + new head)"] = untrained_eval(sft, prefs)

    # diagnostics with the second, independent sample of completions
    from cellrlhf.reward.reward_model_eval import evaluate_saved

    for tag, name in (
        ("all_margin", "all pair kinds + margin loss"),
        ("sampled", "sampled pairs only"),
    ):
        seen = evaluate_saved(
            work / f"reward_{tag}",
            prefs_b,
            split="train",
            output_dir=work / f"reward_{tag}" / "seen",
        )
        results[f"{name}: SEEN perturbations, new samples"] = {
            k: v for k, v in seen.items() if not k.startswith("_")
        }
    for split in ("test", "train"):
        rel = label_reliability(prefs, prefs_b, data, split)
        results[f"label reliability, {split} perturbations (score in an independent group)"] = {
            "pairwise_accuracy_by_kind": {"sampled": rel["sampled_pair_agreement"]},
            "spearman": rel["spearman"],
            "spearman_within_prompt": rel["spearman_within_prompt"],
        }

    manifest = json.loads((prefs / "manifest.json").read_text())
    kinds = ["sampled", "control", "other_perturbation", "shuffled"]
    header = [
        "reward model",
        "pair acc.",
        *[f"acc. {k}" for k in kinds],
        "Spearman pooled",
        "Spearman within prompt",
    ]
    rows = []
    for name, r in results.items():
        by_kind = r.get("pairwise_accuracy_by_kind", {})
        rows.append(
            [name, fmt(r.get("pairwise_accuracy")), *[fmt(by_kind.get(k)) for k in kinds]]
            + [fmt(r.get("spearman")), fmt(r.get("spearman_within_prompt"))]
        )
    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(row) + " |" for row in rows]
    )
    test = results["all pair kinds"]
    counts = manifest["counts"]
    lines = [
        "# Learned reward model: held-out perturbations (Norman 2019, real data)",
        "",
        f"Date: {datetime.date.today().isoformat()}. Machine: {platform.machine()} CPU, "
        f"{args.threads} threads (shared 2-core box). Seed {args.seed}.",
        "",
        "Reproduce (from the repository root):",
        "",
        "```bash",
        f"OMP_NUM_THREADS={args.threads} python benchmarks/bench_reward_model.py --data-dir $CELLRLHF_DATA_DIR "
        f"--work {args.work}",
        "```",
        "",
        f"Training pairs (train perturbations): {counts['train']}; evaluation pairs (held-out "
        f"perturbations {', '.join(test.get('perturbations', []))}): {counts['test']}; "
        f"{test.get('n_completions')} held-out completions in {test.get('n_prompts')} prompts.",
        "",
        table,
        "",
        "Stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()),
        "",
        "Targets: pairwise accuracy >= 0.85 and Spearman >= 0.6 on held-out perturbations.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (work / "reward_model_table.md").write_text(text)
    if args.table:
        Path(args.table).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
