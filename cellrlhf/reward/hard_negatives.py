"""Hard negatives for preference data: answers that are known to be wrong for a prompt.

Sampled completions of an SFT model differ in small ways, so a reward model trained only on them
may never see the mistakes a policy makes once RL pushes it: answering with the control state
when the perturbation acts, answering with another perturbation's response, or listing the right
genes in the wrong order. Each hard negative here is paired with a *real* cell of the prompt's
perturbation as the chosen answer:

``control``
    A control-like cell, drawn from the control pseudo-bulk (genes sampled with probability
    proportional to their mean control expression, ordered by it), for a perturbation with
    differentially expressed genes. Perturbations without an effect get none: there the control
    state is the right answer.
``other_perturbation``
    A real cell of another perturbation of the same split whose response (delta from control)
    correlates weakly with this one's.
``shuffled``
    The chosen real cell with its ranks shuffled: same genes, wrong order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cellrlhf.metrics.fidelity import pearson_rows

__all__ = [
    "HARD_NEGATIVE_KINDS",
    "PromptReference",
    "HardNegative",
    "profile_sentence",
    "shuffle_ranks",
    "build_hard_negatives",
]

HARD_NEGATIVE_KINDS = ("control", "other_perturbation", "shuffled")


@dataclass(frozen=True)
class PromptReference:
    """What the hard-negative builder needs to know about one prompt's perturbation.

    Attributes
    ----------
    perturbation
        Perturbation label (``"KLF1+CEBPA"``).
    cell_context
        Cell type / line the prompt is about.
    reference_perturbed
        Real perturbed pseudo-bulk, vocabulary order.
    reference_control
        Real control pseudo-bulk of the same context, vocabulary order.
    reference_sentences
        Sentences of real perturbed cells.
    n_de_genes
        Number of differentially expressed genes (up + down) of the perturbation.
    """

    perturbation: str
    cell_context: str
    reference_perturbed: np.ndarray
    reference_control: np.ndarray
    reference_sentences: tuple[str, ...]
    n_de_genes: int

    @property
    def delta(self) -> np.ndarray:
        """Real response: perturbed minus control pseudo-bulk."""
        return np.asarray(self.reference_perturbed, dtype=np.float64) - np.asarray(
            self.reference_control, dtype=np.float64
        )


@dataclass(frozen=True)
class HardNegative:
    """A known-bad answer paired with a real cell of the prompt's perturbation.

    Attributes
    ----------
    kind
        One of :data:`HARD_NEGATIVE_KINDS`.
    chosen
        Sentence of a real perturbed cell of the prompt's perturbation.
    rejected
        The hard negative's sentence.
    source
        Where the rejected sentence comes from: ``"control"``, the other perturbation's label, or
        ``"shuffled"``.
    source_context
        The cell context of the cells behind the rejected sentence (the prompt's own context for
        ``control`` and ``shuffled``), so a leakage check can tell a perturbation held out in one
        context (``unseen_pair``) from its training cells in another.
    """

    kind: str
    chosen: str
    rejected: str
    source: str
    source_context: str


def profile_sentence(
    profile: np.ndarray, genes: Sequence[str], *, length: int, rng: np.random.Generator
) -> str:
    """A cell-like sentence drawn from a pseudo-bulk profile.

    ``length`` genes are drawn without replacement with probability proportional to their
    (positive) mean expression, then written in decreasing order of that mean (ties by
    vocabulary order), the way a typical cell of that population would read.

    Parameters
    ----------
    profile
        Mean expression per gene, vocabulary order (non-negative; negative values count as 0).
    genes
        Gene symbols in vocabulary order.
    length
        Number of genes; capped by the number of expressed genes.
    rng
        Random generator (seeded by the caller).
    """
    profile = np.asarray(profile, dtype=np.float64)
    if profile.shape != (len(genes),):
        raise ValueError(
            f"profile has shape {profile.shape} but there are {len(genes)} genes; the reference "
            "vectors must be in the gene vocabulary's order."
        )
    weights = np.clip(np.nan_to_num(profile, nan=0.0), 0.0, None)
    expressed = np.flatnonzero(weights > 0)
    if expressed.size == 0 or length <= 0:
        return ""
    length = min(int(length), int(expressed.size))
    picked = rng.choice(expressed, size=length, replace=False, p=weights[expressed] / weights.sum())
    order = picked[np.lexsort((picked, -weights[picked]))]
    return " ".join(genes[i] for i in order)


def shuffle_ranks(sentence: str, rng: np.random.Generator) -> str | None:
    """The same genes in a different random order; ``None`` when no other order exists."""
    words = sentence.split()
    if len(set(words)) < 2:
        return None
    for _ in range(16):
        shuffled = [words[i] for i in rng.permutation(len(words))]
        if shuffled != words:
            return " ".join(shuffled)
    # every draw gave the identity (only possible for very short sentences): swap two genes
    first, second = 0, next(i for i, w in enumerate(words) if w != words[0])
    words[first], words[second] = words[second], words[first]
    return " ".join(words)


def build_hard_negatives(
    target: PromptReference,
    pool: Sequence[PromptReference],
    *,
    genes: Sequence[str],
    rng: np.random.Generator,
    kinds: Sequence[str] = HARD_NEGATIVE_KINDS,
    per_kind: int = 1,
    min_de_genes: int = 1,
    max_other_delta_pearson: float = 0.5,
) -> list[HardNegative]:
    """Hard negatives for one prompt.

    Parameters
    ----------
    target
        The prompt's perturbation.
    pool
        Perturbations of the *same split* to draw ``other_perturbation`` negatives from (the
        target itself may be in it and is skipped). Never pass held-out perturbations here when
        building training pairs.
    genes
        Gene symbols in vocabulary order (the order of the reference vectors).
    rng
        Random generator, seeded by the caller.
    kinds
        Which kinds to build (subset of :data:`HARD_NEGATIVE_KINDS`).
    per_kind
        Negatives of each kind per prompt.
    min_de_genes
        A perturbation "acts" (and gets ``control`` negatives) when it has at least this many
        differentially expressed genes.
    max_other_delta_pearson
        ``other_perturbation`` negatives come only from perturbations whose response correlates
        with the target's below this value (Pearson of the two deltas from control; 0 when
        either is constant), so the label "worse" holds.

    Returns
    -------
    The negatives; fewer than ``per_kind`` of a kind when the data cannot support it (no real
    cells, no acting perturbation, no dissimilar perturbation, sentences of one gene).
    """
    unknown = set(kinds) - set(HARD_NEGATIVE_KINDS)
    if unknown:
        raise ValueError(
            f"unknown hard negative kinds {sorted(unknown)}; choose from {HARD_NEGATIVE_KINDS}."
        )
    real = [s for s in target.reference_sentences if s.strip()]
    if not real or per_kind <= 0:
        return []
    lengths = np.array([len(s.split()) for s in real])
    out: list[HardNegative] = []

    def draw_real() -> str:
        return real[int(rng.integers(len(real)))]

    if "control" in kinds and target.n_de_genes >= min_de_genes:
        for _ in range(per_kind):
            length = int(lengths[rng.integers(len(lengths))])
            sentence = profile_sentence(target.reference_control, genes, length=length, rng=rng)
            if sentence:
                out.append(
                    HardNegative("control", draw_real(), sentence, "control", target.cell_context)
                )

    if "other_perturbation" in kinds:
        target_delta = target.delta
        candidates = [
            other
            for other in pool
            if other.perturbation != target.perturbation
            and any(s.strip() for s in other.reference_sentences)
            and pearson_rows(other.delta, target_delta, zero_variance=0.0) < max_other_delta_pearson
        ]
        same_context = [c for c in candidates if c.cell_context == target.cell_context]
        candidates = same_context or candidates
        for _ in range(per_kind if candidates else 0):
            other = candidates[int(rng.integers(len(candidates)))]
            other_real = [s for s in other.reference_sentences if s.strip()]
            sentence = other_real[int(rng.integers(len(other_real)))]
            out.append(
                HardNegative(
                    "other_perturbation",
                    draw_real(),
                    sentence,
                    other.perturbation,
                    other.cell_context,
                )
            )

    if "shuffled" in kinds:
        for _ in range(per_kind):
            chosen = draw_real()
            shuffled = shuffle_ranks(chosen, rng)
            if shuffled is not None:
                out.append(
                    HardNegative("shuffled", chosen, shuffled, "shuffled", target.cell_context)
                )
    return out
