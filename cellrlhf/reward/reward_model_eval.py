"""How good is a learned reward model on perturbations it never saw?

Two questions, both on held-out perturbations (the ``test`` split of the preference data, whose
perturbations never appear in the reward model's training pairs):

1. **Pairwise accuracy**: on held-out preference pairs, how often does the model score the
   chosen answer above the rejected one (ties count one half)? Reported overall and per pair kind
   (sampled pairs vs each hard-negative kind), since hard negatives are much easier.
2. **Rank correlation with the true reward**: across the sampled completions of held-out
   prompts, the Spearman correlation between the model's score and the group-aware fidelity
   score the pairs were built from. Reported pooled over all completions and as the mean of
   within-prompt correlations: RL uses rewards within a prompt's group (advantages are
   normalised per group), so the within-prompt figure is the one that matters for the policy.

Both come with 95% intervals over held-out perturbations, the unit of replication
(:mod:`cellrlhf.metrics.intervals`: percentile bootstrap, Student's t below 10 perturbations;
a perturbation's pairs or prompts move together). :func:`reward_model_verdict` turns them into one sentence: where the accuracy on
sampled pairs (the kind of answers RL produces; all pairs when there are none) is not shown
above chance (the interval's lower bound is not above 0.5), it says that PPO with this reward
model cannot be expected to help and recommends the programmatic reward (GRPO). The result
(``reward_model_eval.json``) holds it under ``verdict``; each setting's reward stage writes one.

``python -m cellrlhf.reward.reward_model_eval --model_dir <reward model> --preferences_dir <pairs>``
evaluates a saved model; ``cellrlhf reward`` runs it after training.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EVAL_FILENAME",
    "PLOT_FILENAME",
    "CHANCE_ACCURACY",
    "pairwise_accuracy",
    "pair_accuracy_interval",
    "within_prompt_spearman_interval",
    "reward_model_verdict",
    "spearman",
    "within_group_spearman",
    "score_conversations",
    "evaluate_reward_model",
    "load_reward_model",
    "plot_reward_model_eval",
    "write_reward_model_eval",
    "main",
]

logger = logging.getLogger(__name__)

EVAL_FILENAME = "reward_model_eval.json"
PLOT_FILENAME = "reward_model_eval.png"
CHANCE_ACCURACY = 0.5
RECOMMENDATION = (
    "PPO with this reward model cannot be expected to help; use the programmatic reward (GRPO)."
)


def pairwise_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
    """Fraction of pairs where ``chosen > rejected``; ties count one half. NaN when empty."""
    chosen = np.asarray(chosen, dtype=np.float64)
    rejected = np.asarray(rejected, dtype=np.float64)
    if chosen.shape != rejected.shape:
        raise ValueError(
            f"chosen {chosen.shape} and rejected {rejected.shape} scores differ in shape."
        )
    if chosen.size == 0:
        return math.nan
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import rankdata

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"arrays differ in shape: {a.shape} vs {b.shape}.")
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return math.nan
    ra, rb = rankdata(a[ok]), rankdata(b[ok])
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / denom) if denom > 0 else math.nan


def within_group_spearman(
    a: np.ndarray, b: np.ndarray, groups: Sequence[object]
) -> tuple[float, int]:
    """Mean of per-group Spearman correlations (groups with a defined correlation only).

    Returns
    -------
    The mean (NaN when no group qualifies) and the number of groups averaged.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    labels = np.asarray([str(g) for g in groups], dtype=object)
    values = []
    for label in dict.fromkeys(labels):
        mask = labels == label
        rho = spearman(a[mask], b[mask])
        if np.isfinite(rho):
            values.append(rho)
    return (float(np.mean(values)) if values else math.nan), len(values)


def pair_accuracy_interval(chosen, rejected, perturbations, *, seed: int = 0) -> dict:
    """Pairwise accuracy with a 95% bootstrap interval over perturbations.

    Each pair scores 1 (``chosen > rejected``), 0.5 (tie) or 0; the pairs of one perturbation
    are averaged first, then the perturbation means are resampled
    (:func:`~cellrlhf.metrics.intervals.bootstrap_mean`). Returns the
    :class:`~cellrlhf.metrics.intervals.Interval` as a dict (``estimate``: the mean over
    perturbations; ``low`` / ``high`` NaN with fewer than two perturbations).
    """
    from cellrlhf.metrics.intervals import bootstrap_mean

    chosen = np.asarray(chosen, dtype=np.float64)
    rejected = np.asarray(rejected, dtype=np.float64)
    if chosen.shape != rejected.shape or len(perturbations) != chosen.size:
        raise ValueError("chosen, rejected and perturbations need one entry per pair.")
    correct = (chosen > rejected) + 0.5 * (chosen == rejected)
    clusters = np.asarray(perturbations, dtype=object)
    return bootstrap_mean(correct, clusters, seed=seed, bounds=(0.0, 1.0)).to_dict()


def within_prompt_spearman_interval(a, b, prompts, perturbations, *, seed: int = 0) -> dict:
    """Mean within-prompt Spearman with a 95% bootstrap interval over perturbations.

    One correlation per prompt (prompts with a constant side are left out), averaged per
    perturbation, then bootstrapped over perturbations; returned as an ``Interval`` dict.
    """
    from cellrlhf.metrics.intervals import bootstrap_mean

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    prompts = np.asarray([str(p) for p in prompts], dtype=object)
    perturbations = np.asarray(perturbations, dtype=object)
    rhos, clusters = [], []
    for prompt in dict.fromkeys(prompts):
        mask = prompts == prompt
        rhos.append(spearman(a[mask], b[mask]))
        clusters.append(perturbations[mask][0])
    clusters = np.asarray(clusters, dtype=object)
    return bootstrap_mean(rhos, clusters, seed=seed, bounds=(-1.0, 1.0)).to_dict()


def reward_model_verdict(result: dict[str, Any]) -> dict[str, Any]:
    """Whether the reward model ranks held-out answers better than chance, as one sentence.

    Reads ``pairwise_accuracy_interval_by_kind["sampled"]`` (pairs of sampled answers, what RL
    produces; else ``pairwise_accuracy_interval`` of all pairs) and, when present,
    ``spearman_within_prompt_interval``.

    Returns
    -------
    ``{"near_chance": bool, "pairs": "sampled" | "all", "sentence": str}``. ``near_chance`` is
    true unless the accuracy interval's lower bound is above 0.5 (an interval that cannot be
    computed, with fewer than two perturbations, does not show the model above chance).
    """
    by_kind = result.get("pairwise_accuracy_interval_by_kind") or {}
    pairs = "sampled" if "sampled" in by_kind else "all"
    acc = by_kind.get("sampled") or result.get("pairwise_accuracy_interval") or {}
    est, low, high = (float(acc.get(k, math.nan)) for k in ("estimate", "low", "high"))
    n = int(acc.get("n_clusters", 0))
    near_chance = not low > CHANCE_ACCURACY
    what = f"held-out pairwise accuracy on {pairs} pairs {est:.2f}"
    if np.isfinite(low):
        what += f" (95% CI {low:.2f} to {high:.2f}, {n} perturbations)"
    else:
        what += f" ({n} perturbation{'s' if n != 1 else ''}: too few for an interval)"
    if near_chance:
        sentence = f"The reward model's {what} is not shown above chance (0.5): {RECOMMENDATION}"
    else:
        sentence = f"The reward model's {what} is above chance (0.5)."
    rho = result.get("spearman_within_prompt_interval") or {}
    if rho and np.isfinite(rho.get("estimate", math.nan)):
        r_est, r_low = float(rho["estimate"]), float(rho.get("low", math.nan))
        r_high = float(rho.get("high", math.nan))
        span = f" (95% CI {r_low:.2f} to {r_high:.2f})" if np.isfinite(r_low) else ""
        sentence += f" Within-prompt Spearman with the true group score: {r_est:.2f}{span}"
        sentence += (
            "; it does not rank one prompt's answers better than random." if not r_low > 0 else "."
        )
    return {"near_chance": bool(near_chance), "pairs": pairs, "sentence": sentence}


def score_conversations(
    model,
    tokenizer,
    conversations: Sequence[list[dict[str, str]]],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Reward model scores of whole conversations (prompt + assistant answer).

    Conversations are tokenised with the chat template exactly as TRL's ``RewardTrainer`` does
    for training (no generation prompt), right-padded, and scored in batches on the model's
    device, in evaluation mode and without gradients.

    Parameters
    ----------
    model
        A sequence-classification model with one label.
    tokenizer
        Its tokenizer (``pad_token`` set).
    conversations
        Message lists ending with the assistant's answer.
    batch_size
        Conversations per forward pass.
    max_length
        Longest allowed token sequence; longer ones raise (a truncated answer would be scored
        as a different answer). ``None``: no limit.
    progress
        Show a progress bar.
    """
    import torch
    from tqdm.auto import tqdm

    if tokenizer.pad_token_id is None:
        raise ValueError("the reward model's tokenizer has no pad token; set tokenizer.pad_token.")
    encoded = [
        list(
            tokenizer.apply_chat_template(list(conv), tokenize=True, return_dict=True)["input_ids"]
        )
        for conv in conversations
    ]
    if max_length is not None:
        too_long = [i for i, ids in enumerate(encoded) if len(ids) > max_length]
        if too_long:
            raise ValueError(
                f"{len(too_long)} conversation(s) exceed max_length={max_length} tokens (e.g. #{too_long[0]}: "
                f"{len(encoded[too_long[0]])}); raise max_length."
            )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scores = np.empty(len(encoded), dtype=np.float64)
    # longest first keeps padding low; results go back to their positions
    order = np.argsort([-len(ids) for ids in encoded], kind="stable")
    starts = range(0, len(order), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="reward model scores", disable=not progress, leave=False):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i], dtype=torch.long)
                mask[row, : len(encoded[i])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            scores[batch] = logits[:, 0].float().cpu().numpy()
    model.train(was_training)
    return scores


def _conversations(dataset, answer_column: str) -> list[list[dict[str, str]]]:
    prompts = list(dataset["prompt"])
    answers = list(dataset[answer_column])
    return [list(p) + list(a) for p, a in zip(prompts, answers, strict=True)]


def evaluate_reward_model(
    model,
    tokenizer,
    pairs,
    completions=None,
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Pairwise accuracy and rank correlation of a reward model on held-out data.

    Parameters
    ----------
    model, tokenizer
        The reward model (sequence classification, one label) and its tokenizer.
    pairs
        Preference pairs (``datasets.Dataset`` with ``prompt``, ``chosen``, ``rejected``,
        ``pair_kind``, ``perturbation``, ``score_chosen``, ``score_rejected``).
    completions
        Scored sampled completions (``prompt``, ``completion``, ``score``, ``prompt_id``), or
        ``None`` to skip the correlation.
    batch_size
        Conversations per forward pass.

    Returns
    -------
    A JSON-ready dict: ``pairwise_accuracy``, ``pairwise_accuracy_by_kind``, ``n_pairs``,
    ``spearman`` (pooled), ``spearman_within_prompt``, ``n_completions``, ``n_prompts``,
    ``perturbations``, the intervals over perturbations (``pairwise_accuracy_interval``,
    ``pairwise_accuracy_interval_by_kind``, ``spearman_within_prompt_interval``), ``verdict``
    (:func:`reward_model_verdict`), and the raw scores under ``"_arrays"`` (for plots; dropped
    when saved).
    """
    result: dict[str, Any] = {"n_pairs": int(len(pairs))}
    arrays: dict[str, np.ndarray] = {}
    if len(pairs):
        chosen = score_conversations(
            model,
            tokenizer,
            _conversations(pairs, "chosen"),
            batch_size=batch_size,
            progress=progress,
        )
        rejected = score_conversations(
            model,
            tokenizer,
            _conversations(pairs, "rejected"),
            batch_size=batch_size,
            progress=progress,
        )
        kinds = np.asarray(list(pairs["pair_kind"]), dtype=object)
        result["pairwise_accuracy"] = pairwise_accuracy(chosen, rejected)
        result["pairwise_accuracy_by_kind"] = {
            str(kind): pairwise_accuracy(chosen[kinds == kind], rejected[kinds == kind])
            for kind in sorted(set(kinds))
        }
        result["n_pairs_by_kind"] = {str(k): int((kinds == k).sum()) for k in sorted(set(kinds))}
        perts = np.asarray([str(p) for p in pairs["perturbation"]], dtype=object)
        result["pairwise_accuracy_interval"] = pair_accuracy_interval(chosen, rejected, perts)
        result["pairwise_accuracy_interval_by_kind"] = {
            str(kind): pair_accuracy_interval(
                chosen[kinds == kind], rejected[kinds == kind], perts[kinds == kind]
            )
            for kind in sorted(set(kinds))
        }
        result["perturbations"] = sorted(set(pairs["perturbation"]))
        arrays.update(chosen=chosen, rejected=rejected, pair_kind=kinds)
    else:
        result["pairwise_accuracy"] = math.nan
    if completions is not None and len(completions):
        rm = score_conversations(
            model,
            tokenizer,
            _conversations(completions, "completion"),
            batch_size=batch_size,
            progress=progress,
        )
        true = np.asarray(list(completions["score"]), dtype=np.float64)
        groups = list(completions["prompt_id"])
        result["n_completions"] = int(len(completions))
        result["spearman"] = spearman(rm, true)
        result["spearman_within_prompt"], result["n_prompts"] = within_group_spearman(
            rm, true, groups
        )
        if "perturbation" in completions.column_names:
            result["spearman_within_prompt_interval"] = within_prompt_spearman_interval(
                rm, true, groups, list(completions["perturbation"])
            )
        arrays.update(rm_score=rm, true_score=true)
    result["verdict"] = reward_model_verdict(result)
    log = logger.warning if result["verdict"]["near_chance"] else logger.info
    log("%s", result["verdict"]["sentence"])
    result["_arrays"] = arrays
    return result


def load_reward_model(model_dir: str | Path, *, dtype: str = "float32"):
    """Load a saved reward model and its tokenizer, on the device accelerate selects.

    Weights load as safetensors only; no remote code.
    """
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} has no config.json: it is not a saved reward model.")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, dtype=getattr(torch, dtype), use_safetensors=True
    )
    if model.config.num_labels != 1:
        raise ValueError(
            f"{model_dir} has num_labels={model.config.num_labels}; a reward model outputs one score."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    # the device comes from accelerate's state (accelerate config / launcher), not from code
    model.to(PartialState().device)
    model.eval()
    return model, tokenizer


def plot_reward_model_eval(result: dict[str, Any], path: str | Path) -> Path | None:
    """Scatter of reward-model score vs true score, and chosen-minus-rejected by kind (PNG)."""
    from cellrlhf.figures import subplots

    arrays = result.get("_arrays") or {}
    if not arrays:
        return None
    fig, axes = subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    if "rm_score" in arrays:
        ax.scatter(arrays["true_score"], arrays["rm_score"], s=6, alpha=0.5)
        ax.set_xlabel("true group-aware score")
        ax.set_ylabel("reward model score")
        ax.set_title(
            f"held-out completions: Spearman {result.get('spearman', math.nan):.2f} pooled, "
            f"{result.get('spearman_within_prompt', math.nan):.2f} within prompt",
            fontsize=9,
        )
    else:
        ax.axis("off")
    ax = axes[1]
    if "chosen" in arrays:
        by_kind = result.get("pairwise_accuracy_by_kind", {})
        diffs = arrays["chosen"] - arrays["rejected"]
        kinds = list(by_kind)
        kind_of = np.asarray(arrays.get("pair_kind", []), dtype=object)
        if kind_of.size == diffs.size and kinds:
            ax.boxplot([diffs[kind_of == k] for k in kinds], tick_labels=kinds)
            ax.tick_params(axis="x", labelrotation=20)
        else:
            ax.hist(diffs, bins=30)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_ylabel("score(chosen) - score(rejected)")
        ax.set_title(
            f"held-out pairs: accuracy {result.get('pairwise_accuracy', math.nan):.2f}", fontsize=9
        )
    else:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def write_reward_model_eval(result: dict[str, Any], output_dir: str | Path) -> Path:
    """Write ``reward_model_eval.json`` (and the PNG) to ``output_dir``; returns the JSON path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot_reward_model_eval(result, output_dir / PLOT_FILENAME)
    payload = {k: v for k, v in result.items() if not k.startswith("_")}
    path = output_dir / EVAL_FILENAME
    path.write_text(json.dumps(_json_ready(payload), indent=1))
    return path


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def evaluate_saved(
    model_dir: str | Path,
    preferences_dir: str | Path,
    *,
    split: str = "test",
    output_dir: str | Path | None = None,
    batch_size: int = 32,
    max_pairs: int | None = None,
    max_completions: int | None = None,
) -> dict[str, Any]:
    """Evaluate a saved reward model on a preference directory's split and write the results.

    Parameters
    ----------
    model_dir
        Saved reward model.
    preferences_dir
        Directory written by ``cellrlhf preferences``.
    split
        Split to evaluate (``test``: held-out perturbations).
    output_dir
        Where ``reward_model_eval.json`` / ``.png`` go (default ``model_dir``).
    max_pairs, max_completions
        Evaluate the first this many rows only (quick checks).
    """
    from cellrlhf.reward.preference_files import load_preferences

    pairs, completions = load_preferences(preferences_dir, split)
    if max_pairs is not None:
        pairs = pairs.select(range(min(max_pairs, len(pairs))))
    if completions is not None and max_completions is not None:
        completions = completions.select(range(min(max_completions, len(completions))))
    model, tokenizer = load_reward_model(model_dir)
    result = evaluate_reward_model(model, tokenizer, pairs, completions, batch_size=batch_size)
    result.update(model_dir=str(model_dir), preferences_dir=str(preferences_dir), split=split)
    write_reward_model_eval(result, output_dir or model_dir)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cellrlhf.reward.reward_model_eval``: evaluate a saved reward model."""
    parser = argparse.ArgumentParser(
        prog="python -m cellrlhf.reward.reward_model_eval", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model_dir", required=True, help="saved reward model directory")
    parser.add_argument(
        "--preferences_dir", required=True, help="directory written by `cellrlhf preferences`"
    )
    parser.add_argument(
        "--split", default="test", help="split to evaluate (default: test, held-out perturbations)"
    )
    parser.add_argument(
        "--output_dir",
        default=None,
        help="where to write reward_model_eval.json (default: model_dir)",
    )
    parser.add_argument("--batch_size", type=int, default=32, help="conversations per forward pass")
    parser.add_argument(
        "--max_pairs", type=int, default=None, help="evaluate at most this many pairs"
    )
    parser.add_argument(
        "--max_completions", type=int, default=None, help="at most this many completions"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = evaluate_saved(
        args.model_dir,
        args.preferences_dir,
        split=args.split,
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        max_pairs=args.max_pairs,
        max_completions=args.max_completions,
    )
    summary = {k: v for k, v in result.items() if not k.startswith("_")}
    print(json.dumps(_json_ready(summary), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
