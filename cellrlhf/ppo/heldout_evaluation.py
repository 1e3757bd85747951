"""Score a policy's sampled cells on held-out perturbations: the truth the reward stands in for.

For each held-out prompt (one perturbation in one cell context of the ``rl/`` test split), the
monitor samples ``G`` answers; here they become one pseudo-bulk per prompt and are scored
against the real data, with the reward stage's own metrics:

- **fidelity**: ``pearson_delta`` of the pseudo-bulk change against the decoded control,
  versus the real change (``cellrlhf.metrics.fidelity``), on all genes and on the ``k`` genes
  that change most in the real data; averaged over prompts; and ``pearson_specific`` (both
  changes taken relative to the mean training change of the prompt's cell context, the
  evaluation's perturbation-specific metric) for prompts given that reference;
- **validity**: decoded gene fraction, duplicate / unknown / empty / unclosed fractions, mean
  length, and the share of answers that never produced an end token;
- **diversity**: distinct-sentence fraction and gene-token entropy within each prompt's group;
- **distance to real cells**: energy coefficient (or MMD) between the generated cells and the
  prompt's real cells (``reference_sentences``);
- **learned reward** and **KL** to the reference, when the caller measured them.

Everything here is numpy on decoded text; generation lives in
:mod:`cellrlhf.ppo.heldout_generation`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "HELDOUT_COLUMNS",
    "HeldoutPrompt",
    "HeldoutScores",
    "heldout_prompts_from_dataset",
    "score_heldout_samples",
]

HELDOUT_COLUMNS = ("prompt", "reference_perturbed", "reference_control", "decoded_control")
_OPTIONAL_COLUMNS = ("perturbation", "cell_context", "reference_sentences")
_BREAKDOWN_KEYS = (
    "valid_fraction",
    "duplicate_fraction",
    "unknown_fraction",
    "unclosed_fraction",
    "empty_fraction",
    "mean_length",
    "token_entropy",
    "unique_gene_fraction",
)


@dataclass(frozen=True)
class HeldoutPrompt:
    """One held-out prompt and the real data its answers are compared with (vocabulary order)."""

    prompt: tuple
    perturbation: str
    cell_context: str
    reference_perturbed: np.ndarray
    reference_control: np.ndarray
    decoded_control: np.ndarray
    reference_sentences: tuple[str, ...] = ()
    reference_delta: np.ndarray | None = None  # mean training change of the context

    @property
    def name(self) -> str:
        return (
            f"{self.perturbation}|{self.cell_context}" if self.cell_context else self.perturbation
        )


@dataclass(frozen=True)
class HeldoutScores:
    """Aggregate metrics (``heldout/...`` keys) and per-prompt fidelity of one evaluation."""

    metrics: dict[str, float]
    per_prompt: dict[str, dict[str, float]]


def heldout_prompts_from_dataset(
    dataset,
    *,
    max_prompts: int | None = None,
    seed: int = 0,
    train_mean_deltas: Mapping[str, np.ndarray] | None = None,
) -> list[HeldoutPrompt]:
    """Held-out prompts from an ``rl/`` split (seeded subsample of ``max_prompts`` rows).

    ``train_mean_deltas`` (cell context -> mean training change, from
    :func:`cellrlhf.reward.specific_reference.context_mean_deltas` of the ``rl/train`` split)
    gives each prompt whose context it holds a ``reference_delta``, so ``pearson_specific`` is
    scored for it.

    Raises
    ------
    ValueError
        When a needed column is missing or the split is empty.
    """
    missing = [c for c in HELDOUT_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"the held-out split lacks column(s) {missing} (has {dataset.column_names}); it must be "
            "the rl/ data written by `cellrlhf data build`."
        )
    if len(dataset) == 0:
        raise ValueError("the held-out split is empty: there is nothing to monitor.")
    rows = np.arange(len(dataset))
    if max_prompts is not None and len(dataset) > max_prompts:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(dataset), size=max_prompts, replace=False))
    columns = [c for c in (*HELDOUT_COLUMNS, *_OPTIONAL_COLUMNS) if c in dataset.column_names]
    means = dict(train_mean_deltas or {})
    out = []
    for row in dataset.select(rows.tolist()).select_columns(columns):
        context = str(row.get("cell_context", "") or "")
        out.append(
            HeldoutPrompt(
                prompt=tuple({"role": m["role"], "content": m["content"]} for m in row["prompt"]),
                perturbation=str(row.get("perturbation", "") or ""),
                cell_context=context,
                reference_perturbed=np.asarray(row["reference_perturbed"], dtype=np.float64),
                reference_control=np.asarray(row["reference_control"], dtype=np.float64),
                decoded_control=np.asarray(row["decoded_control"], dtype=np.float64),
                reference_sentences=tuple(row.get("reference_sentences") or ()),
                reference_delta=np.asarray(means[context], dtype=np.float64)
                if context in means
                else None,
            )
        )
    return out


def score_heldout_samples(
    prompts: Sequence[HeldoutPrompt],
    completions: Sequence[Sequence[str]],
    *,
    decoder,
    finished: Sequence[Sequence[bool]] | None = None,
    learned_rewards: Sequence[Sequence[float]] | None = None,
    top_k_de: int = 20,
    distance: str = "energy",
) -> HeldoutScores:
    """Fidelity, validity, diversity and distance of ``G`` sampled answers per held-out prompt.

    Parameters
    ----------
    prompts
        The held-out prompts.
    completions
        For each prompt, its sampled answers (text with ``<cell>`` markup, end token removed).
    decoder
        The data set's :class:`~cellrlhf.cell2text.decoder.ExpressionDecoder`.
    finished
        For each answer, whether it produced an end token (``None``: not reported).
    learned_rewards
        For each answer, the learned reward model's score (``None``: not reported).
    top_k_de
        Genes of the top-DE fidelity.
    distance
        ``"energy"`` or ``"mmd"``.
    """
    from cellrlhf.ppo.sample_checks import fully_valid_cells

    if len(completions) != len(prompts):
        raise ValueError(f"{len(completions)} answer groups for {len(prompts)} prompts.")
    sizes = [len(c) for c in completions]
    if any(s < 1 for s in sizes):
        raise ValueError("every held-out prompt needs at least one sampled answer.")
    texts = [t for group in completions for t in group]
    codes = np.repeat(np.arange(len(prompts)), sizes)
    breakdown = _group_breakdown(prompts, texts, codes, decoder=decoder, distance=distance)
    X, report = decoder.decode(texts)
    fid, fid_top, specific = _pseudobulk_fidelity(prompts, X.tocsr(), codes, top_k_de)
    first = np.searchsorted(codes, np.arange(len(prompts)))
    group_distance = np.asarray(breakdown.group_distribution, dtype=np.float64)[first]
    distinct = _distinct_per_group(texts, codes, len(prompts))
    ended = None if finished is None else [bool(f) for group in finished for f in group]
    metrics: dict[str, float] = {
        "heldout/pearson_delta": _nanmean(fid),
        f"heldout/pearson_delta_top{top_k_de}": _nanmean(fid_top),
        "heldout/n_prompts": float(len(prompts)),
        "heldout/samples_per_prompt": float(np.mean(sizes)),
        **{
            f"heldout/{k}": float(breakdown.metrics[k])
            for k in _BREAKDOWN_KEYS
            if k in breakdown.metrics
        },
        "heldout/fully_valid_fraction": float(fully_valid_cells(report, texts, ended).mean()),
        f"heldout/{distance}_to_real": _nanmean(group_distance),
        **_side_measures(ended, learned_rewards),
        "heldout/distinct_fraction": _nanmean(distinct),
    }
    if specific is not None:
        metrics["heldout/pearson_specific"] = _nanmean(specific)
    per_prompt = {
        p.name: {
            "pearson_delta": float(fid[i]),
            **({"pearson_specific": float(specific[i])} if specific is not None else {}),
            f"pearson_delta_top{top_k_de}": float(fid_top[i]),
            f"{distance}_to_real": float(group_distance[i]),
            "distinct_fraction": float(distinct[i]),
        }
        for i, p in enumerate(prompts)
    }
    return HeldoutScores(metrics=metrics, per_prompt=per_prompt)


def _group_breakdown(prompts, texts, codes: np.ndarray, *, decoder, distance: str):
    """Validity, diversity and distance of the answers: the fidelity reward's own breakdown
    (group credit, no penalties mixed in)."""
    from cellrlhf.reward.fidelity_reward import GroupFidelityReward

    scorer = GroupFidelityReward(decoder, credit="group", distance=distance, gather=False)
    has_sentences = all(p.reference_sentences for p in prompts)
    return scorer.score(
        [f"heldout-{i}" for i in codes],
        texts,
        reference_perturbed=[prompts[i].reference_perturbed for i in codes],
        reference_control=[prompts[i].reference_control for i in codes],
        decoded_control=[prompts[i].decoded_control for i in codes],
        reference_sentences=[list(prompts[i].reference_sentences) for i in codes]
        if has_sentences
        else None,
    )


def _pseudobulk_fidelity(prompts, X, codes: np.ndarray, top_k_de: int):
    """cell-eval's ``pearson_delta`` of each prompt's pseudo-bulk, on all and on the top-DE genes,
    and ``pearson_specific`` (NaN for a prompt without a reference; ``None`` when no prompt has
    one)."""
    from cellrlhf.metrics.fidelity import pearson_delta, pearson_delta_top_k, pearson_specific

    pred = np.vstack([np.asarray(X[codes == i].mean(axis=0)).ravel() for i in range(len(prompts))])
    pred_ctrl = np.vstack([p.decoded_control for p in prompts])
    real = np.vstack([p.reference_perturbed for p in prompts])
    real_ctrl = np.vstack([p.reference_control for p in prompts])
    fid = np.atleast_1d(pearson_delta(pred, pred_ctrl, real, real_ctrl))
    fid_top = np.atleast_1d(pearson_delta_top_k(pred - pred_ctrl, real - real_ctrl, top_k_de))
    if all(p.reference_delta is None for p in prompts):
        return fid, fid_top, None
    specific = np.full(len(prompts), np.nan)
    for i, p in enumerate(prompts):
        if p.reference_delta is not None:
            specific[i] = pearson_specific(
                pred[i], pred_ctrl[i], real[i], real_ctrl[i], p.reference_delta
            )
    return fid, fid_top, specific


def _side_measures(ended, learned_rewards) -> dict[str, float]:
    """Share of answers without an end token and the learned reward, where the caller gave them."""
    out = {}
    if ended is not None:
        flags = np.asarray(ended)
        out["heldout/no_end_fraction"] = float(1.0 - flags.mean()) if flags.size else math.nan
    if learned_rewards is not None:
        scores = np.asarray([float(s) for group in learned_rewards for s in group])
        out["heldout/learned_reward"] = _nanmean(scores)
        out["heldout/learned_reward_std"] = float(np.nanstd(scores)) if scores.size else math.nan
    return out


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _distinct_per_group(texts: Sequence[str], codes: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.zeros(n_groups)
    for g in range(n_groups):
        group = [" ".join(texts[i].split()).upper() for i in np.flatnonzero(codes == g)]
        out[g] = len(set(group)) / len(group) if group else math.nan
    return out
