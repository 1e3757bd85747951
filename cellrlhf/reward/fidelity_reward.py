"""The group fidelity reward: TRL's reward-function signature, scored per prompt group.

Per-cell rewards collapse a policy onto one signature (see the pilot findings), so the reward
reads each prompt's ``G`` completions together::

    reward = GroupFidelityReward(decoder)
    trainer = GRPOTrainer(..., reward_funcs=[reward])      # or RLOOTrainer, or call it yourself
    rewards = reward(prompts, completions, **dataset_columns)   # list[float], one per completion

For the completions ``i = 1..G`` of one prompt (rows with the same prompt form a group):

1. Decode each completion (:class:`~cellrlhf.cell2text.decoder.ExpressionDecoder`; markup,
   unknown words and repeats handled there) to a row ``x_i``.
2. Group fidelity ``F = pearson(mean_i x_i - decoded_control, reference_perturbed -
   reference_control)``: the pseudo-bulk change against the control decoded the same way, so
   both sides share the decoder's bias.
3. Leave-one-out credit: ``F_(-i)`` is the fidelity without completion ``i``; completion ``i``
   receives the jackknife pseudo-value ``f_i = G * F - (G - 1) * F_(-i) = F + (G - 1) * (F -
   F_(-i))``, clipped to ``[-pseudo_clip, pseudo_clip]``. Its group mean is the jackknife
   estimate of ``F``; its spread is how much each completion moved the pseudo-bulk towards
   (or away from) the truth. ``credit="group"`` gives every member ``F`` instead.
4. Optionally the same for the top-``k`` changed genes (``weights.top_de``), the same on the
   perturbation-specific change (``weights.specific``; Systema's idea, as the evaluation's
   ``pearson_specific``): with ``m`` the mean training change of the prompt's cell context
   (``train_mean_deltas``), the pseudo-bulk minus ``max(decoded_control + m, 0)`` against
   ``reference_perturbed - max(reference_control + m, 0)``, so a group that writes the average
   response scores 0 there; and a distributional
   term: the energy coefficient ``H`` in ``[0, 1]`` (or RBF MMD^2) between the group's decoded
   cells and the decoded ``reference_sentences`` (real cells), as a jackknife pseudo-value
   ``d_i`` too.
5. Per-completion penalties: duplicate-word fraction, no end of cell (``</cell>`` never
   written, or the completion ended without an end token), unknown-word fraction, nothing
   decodable.

``reward_i = w.fidelity * f_i + w.top_de * t_i + w.specific * s_i - w.distribution * d_i
- w.duplicates * dup_frac_i - w.unclosed * unclosed_i - w.unknown * unknown_frac_i
- w.empty * empty_i``, always finite.

Columns read from the dataset (the data stage's ``rl/`` split): ``reference_perturbed``,
``reference_control``, ``decoded_control`` (lists of floats, vocabulary order) and, for the
distributional term, ``reference_sentences`` (list of real cell sentences); for the specific
term, ``cell_context``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp

from cellrlhf.metrics.fidelity import top_k_changed_genes
from cellrlhf.reward.distribution import (
    DISTRIBUTION_DISTANCES,
    ReferenceCells,
    batched_group_distances,
)
from cellrlhf.reward.diversity import diversity_metrics
from cellrlhf.reward.jackknife import group_pearson_with_leave_one_out
from cellrlhf.reward.process_gather import gather_reward_batch
from cellrlhf.reward.specific_reference import CONTEXT_COLUMN, checked_context_means, context_rows

__all__ = [
    "REFERENCE_COLUMNS",
    "RewardWeights",
    "GroupRewardBreakdown",
    "GroupFidelityReward",
    "completion_text",
    "group_by_prompt",
]

logger = logging.getLogger(__name__)

REFERENCE_COLUMNS = ("reference_perturbed", "reference_control", "decoded_control")
_SENTENCES_COLUMN = "reference_sentences"
_DENSE_BLOCK_VALUES = 4_000_000
_NO_REFERENCE = object()  # cache marker: these reference sentences hold no cell  # decoded values densified at once by the distributional term


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the reward's terms (penalties are subtracted).

    Attributes
    ----------
    fidelity
        Leave-one-out pseudo-value of the group's ``pearson_delta`` (all genes).
    top_de
        The same on the ``top_k`` genes that change most in the real data.
    specific
        The same on the change relative to the context's mean training change (needs
        ``train_mean_deltas`` and the ``cell_context`` column); 0 by default.
    distribution
        Pseudo-value of the distance between generated and real cells (energy coefficient
        or MMD^2); needs the ``reference_sentences`` column.
    duplicates
        Fraction of a completion's words that repeat a gene already written (pilot: 1.0).
    unclosed
        The cell was never closed / no end token (hit the length cap; pilot: 0.5).
    unknown
        Fraction of words that are not vocabulary genes.
    empty
        No gene could be decoded at all (empty or garbage completion).
    """

    fidelity: float = 1.0
    top_de: float = 0.0
    specific: float = 0.0
    distribution: float = 0.25
    duplicates: float = 1.0
    unclosed: float = 0.5
    unknown: float = 1.0
    empty: float = 1.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"weight {name}={value!r} must be a finite number >= 0.")


@dataclass(frozen=True)
class GroupRewardBreakdown:
    """Every term of the reward for one batch (arrays: one entry per completion).

    ``group`` holds each completion's group index; ``group_fidelity`` and
    ``group_distribution`` repeat the group's value on each member. ``specific`` is the
    credited perturbation-specific term (zeros without ``train_mean_deltas``).
    """

    reward: np.ndarray
    group: np.ndarray
    fidelity: np.ndarray
    group_fidelity: np.ndarray
    top_de: np.ndarray
    distribution: np.ndarray
    group_distribution: np.ndarray
    duplicate_fraction: np.ndarray
    unclosed: np.ndarray
    unknown_fraction: np.ndarray
    empty: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)
    specific: np.ndarray = field(default_factory=lambda: np.zeros(0))


def completion_text(completion: object) -> str:
    """The text of a completion: a string, or the assistant content of a message list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content", "")
        return content if isinstance(content, str) else ""
    if isinstance(completion, Sequence) and not isinstance(completion, (bytes, bytearray)):
        parts = [
            m.get("content", "")
            for m in completion
            if isinstance(m, dict) and m.get("role", "assistant") == "assistant"
        ]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def _prompt_key(prompt: object) -> object:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict):
        return ("dict", tuple(sorted((str(k), repr(v)) for k, v in prompt.items())))
    if isinstance(prompt, Sequence):
        return tuple(_prompt_key(p) for p in prompt)
    return repr(prompt)


def group_by_prompt(prompts: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    """Group index of each prompt (identical prompts share one) and the first row of each group.

    Works for text prompts and conversational ones (lists of ``{"role", "content"}``),
    wherever the repeats are in the batch.
    """
    index: dict[object, int] = {}
    codes = np.fromiter(
        (index.setdefault(_prompt_key(p), len(index)) for p in prompts),
        dtype=np.int64,
        count=len(prompts),
    )
    first = np.full(len(index), -1, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]
    return codes, first


class GroupFidelityReward:
    """Group-level perturbation fidelity reward with leave-one-out credit (TRL signature).

    Parameters
    ----------
    decoder
        The :class:`~cellrlhf.cell2text.decoder.ExpressionDecoder` saved with the data set
        (fitted on training cells). Its vocabulary fixes the gene order of every reference.
    weights
        :class:`RewardWeights` (or a dict of them).
    credit
        ``"jackknife"`` (leave-one-out pseudo-values, default) or ``"group"`` (every member
        gets the group value; penalties alone separate them).
    top_k
        Genes used by the ``top_de`` term.
    distance
        ``"energy"`` or ``"mmd"`` for the distributional term.
    pseudo_clip
        Bound on the pseudo-values (a group of ``G`` can produce values up to ``2G - 1``).
    end_token_ids
        Token ids that end a cell (e.g. the tokenizer's ``</cell>`` and EOS). With them, and
        TRL's ``completion_ids``, a completion counts as finished when it contains one; TRL
        decodes completions with ``skip_special_tokens=True``, which removes ``</cell>`` from
        the text when it is a special token.
    max_genes
        Decode at most this many distinct genes per completion (default: all).
    log_distribution
        Compute the distributional distance for logging even when its weight is 0.
    gather
        ``"auto"``: all-gather the batch across ``torch.distributed`` processes so that prompt
        groups are whole (no-op on one process); ``False`` to score local slices only.
    reference_cache_size
        Decoded reference cells kept between calls (keyed by their sentences).
    train_mean_deltas
        Cell context -> mean training change (vocabulary order), the reference of the
        ``specific`` term (:func:`cellrlhf.reward.specific_reference.context_mean_deltas` of the
        ``rl/train`` split). Needed when ``weights.specific > 0``; given, the term is logged
        (``<name>/pearson_specific_group``) even at weight 0.
    name
        ``__name__`` under which TRL logs the reward.
    """

    def __init__(
        self,
        decoder,
        *,
        weights: RewardWeights | dict | None = None,
        credit: str = "jackknife",
        top_k: int = 20,
        distance: str = "energy",
        pseudo_clip: float = 3.0,
        end_token_ids: Sequence[int] | None = None,
        max_genes: int | None = None,
        log_distribution: bool = True,
        gather: str | bool = "auto",
        reference_cache_size: int = 4096,
        train_mean_deltas: Mapping[str, Sequence[float]] | None = None,
        name: str = "group_fidelity",
    ) -> None:
        if not hasattr(decoder, "decode") or not hasattr(decoder, "vocab"):
            raise TypeError(
                "decoder must be an ExpressionDecoder (with .decode and .vocab); load the one "
                "saved with your data set: ExpressionDecoder.load(<dataset dir>)."
            )
        if credit not in ("jackknife", "group"):
            raise ValueError(f"credit={credit!r}; choose 'jackknife' or 'group'.")
        if distance not in DISTRIBUTION_DISTANCES:
            raise ValueError(f"distance={distance!r}; choose one of {DISTRIBUTION_DISTANCES}.")
        if top_k < 2:
            raise ValueError(f"top_k={top_k}; a correlation needs at least 2 genes.")
        if not pseudo_clip > 0:
            raise ValueError(f"pseudo_clip={pseudo_clip} must be > 0.")
        if gather not in ("auto", False):
            raise ValueError(f"gather={gather!r}; choose 'auto' or False.")
        self.decoder = decoder
        self.weights = (
            RewardWeights(**weights) if isinstance(weights, dict) else (weights or RewardWeights())
        )
        self.credit = credit
        self.top_k = int(top_k)
        self.distance = distance
        self.pseudo_clip = float(pseudo_clip)
        self.end_token_ids = None if end_token_ids is None else frozenset(map(int, end_token_ids))
        self.max_genes = max_genes
        self.log_distribution = log_distribution
        self.gather = gather
        self.reference_cache_size = int(reference_cache_size)
        self.__name__ = name
        self.n_genes = len(decoder.vocab)
        self.train_mean_deltas = checked_context_means(
            train_mean_deltas, self.n_genes, required=self.weights.specific > 0
        )
        self.last_breakdown: GroupRewardBreakdown | None = None
        self._references: OrderedDict[tuple[int, int], object] = OrderedDict()
        self._warned_unmarked = False

    # ------------------------------------------------------------------ TRL entry point
    def __call__(
        self,
        prompts: Sequence[object],
        completions: Sequence[object],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **columns,
    ) -> list[float]:
        """Rewards, one finite float per completion (TRL reward-function signature).

        ``columns`` are the dataset's columns, row-aligned with the completions. TRL also
        passes ``trainer_state``, ``log_metric`` and ``log_extra``: ``log_metric`` receives the
        batch's fidelity, validity and diversity numbers (``<name>/pearson_delta_group``,
        ``<name>/distinct_fraction``, ...), ``log_extra`` each completion's group fidelity
        (column ``<name>/group_pearson_delta`` of TRL's completions table).
        """
        log_metric: Callable | None = columns.pop("log_metric", None)
        log_extra: Callable | None = columns.pop("log_extra", None)
        columns.pop("trainer_state", None)
        columns.pop("environments", None)
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions; expected one each.")
        needed = list(REFERENCE_COLUMNS)
        if _SENTENCES_COLUMN in columns and self._needs_distribution:
            needed.append(_SENTENCES_COLUMN)
        if self.train_mean_deltas is not None:
            needed.append(CONTEXT_COLUMN)
        missing = [c for c in needed if c not in columns]
        if missing:
            raise KeyError(
                f"the reward needs dataset column(s) {missing}; the data stage's rl/ split has "
                f"them (got columns {sorted(columns)})."
            )
        local = {"prompts": list(prompts), "completions": list(completions)}
        local.update({c: list(columns[c]) for c in needed})
        if completion_ids is not None:
            local["completion_ids"] = [list(map(int, ids)) for ids in completion_ids]
        batch, own = gather_reward_batch(local) if self.gather == "auto" else (local, slice(0, n))
        breakdown = self.score(
            batch["prompts"],
            batch["completions"],
            completion_ids=batch.get("completion_ids"),
            **{c: batch[c] for c in needed},
        )
        self.last_breakdown = breakdown
        if log_metric is not None:
            for key, value in breakdown.metrics.items():
                if np.isfinite(value):
                    log_metric(f"{self.__name__}/{key}", float(value))
        if log_extra is not None:
            values = breakdown.group_fidelity[own]
            log_extra(f"{self.__name__}/group_pearson_delta", [float(v) for v in values])
        return [float(r) for r in breakdown.reward[own]]

    @property
    def _needs_distribution(self) -> bool:
        return self.weights.distribution > 0 or self.log_distribution

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        prompts: Sequence[object],
        completions: Sequence[object],
        *,
        completion_ids: Sequence[Sequence[int]] | None = None,
        reference_perturbed: Sequence[Sequence[float]],
        reference_control: Sequence[Sequence[float]],
        decoded_control: Sequence[Sequence[float]],
        reference_sentences: Sequence[Sequence[str]] | None = None,
        cell_context: Sequence[str] | None = None,
    ) -> GroupRewardBreakdown:
        """Score a batch and return every term (see the module docstring for the formula)."""
        n = len(completions)
        if n == 0:
            empty = np.zeros(0)
            return GroupRewardBreakdown(empty, empty.astype(int), *([empty] * 9))
        codes, first = group_by_prompt(prompts)
        n_groups = len(first)
        texts = [completion_text(c) for c in completions]
        X, report = self.decoder.decode(texts, max_genes=self.max_genes)
        X = sp.csr_matrix(X, dtype=np.float64)

        perturbed = self._reference_rows(reference_perturbed, first, "reference_perturbed")
        control = self._reference_rows(reference_control, first, "reference_control")
        decoded_ctrl = self._reference_rows(decoded_control, first, "decoded_control")
        truth = perturbed - control

        sizes = np.bincount(codes, minlength=n_groups).astype(np.float64)
        fid = group_pearson_with_leave_one_out(X, codes, decoded_ctrl, truth)
        fidelity = self._credit(fid.group, fid.leave_one_out, codes, sizes)
        top = self._top_de_term(X, codes, sizes, decoded_ctrl, truth)
        specific, specific_group = self._specific_term(
            X, codes, first, sizes, (perturbed, control, decoded_ctrl), cell_context
        )

        dist, group_dist = np.zeros(n), np.full(n, np.nan)
        if self._needs_distribution and reference_sentences is not None:
            dist, group_dist = self._distribution(X, codes, first, reference_sentences)

        n_words = np.asarray(report.n_words, dtype=np.float64)
        dup = np.asarray(report.n_duplicates) / np.maximum(n_words, 1.0)
        unknown = np.asarray(report.n_unknown) / np.maximum(n_words, 1.0)
        empty = np.asarray(report.n_valid) == 0
        unclosed = self._unclosed(report, completion_ids)

        w = self.weights
        reward = (
            w.fidelity * fidelity
            + w.top_de * top
            + w.specific * specific
            - w.distribution * np.nan_to_num(dist)
            - w.duplicates * dup
            - w.unclosed * unclosed
            - w.unknown * unknown
            - w.empty * empty
        )
        reward = np.nan_to_num(reward, nan=0.0, posinf=0.0, neginf=0.0)

        metrics = {
            "pearson_delta_group": float(fid.group[fid.defined].mean())
            if fid.defined.any()
            else float("nan"),
            "reward_mean": float(reward.mean()),
            "valid_fraction": float(report.valid_fraction),
            "duplicate_fraction": float(report.duplicate_fraction),
            "unknown_fraction": float(report.unknown_fraction),
            "unclosed_fraction": float(unclosed.mean()),
            "empty_fraction": float(empty.mean()),
            "mean_length": float(n_words.mean()),
            "group_size": float(sizes.mean()),
            **diversity_metrics(X, codes).as_dict(),
        }
        if specific_group is not None:
            metrics["pearson_specific_group"] = (
                float(specific_group.mean()) if specific_group.size else float("nan")
            )
        if np.isfinite(group_dist).any():
            metrics[f"{self.distance}_to_real"] = float(np.nanmean(group_dist[first]))
        return GroupRewardBreakdown(
            reward=reward,
            group=codes,
            fidelity=fidelity,
            group_fidelity=fid.group[codes],
            top_de=top,
            distribution=dist,
            group_distribution=group_dist,
            duplicate_fraction=dup,
            unclosed=unclosed,
            unknown_fraction=unknown,
            empty=empty.astype(np.float64),
            metrics=metrics,
            specific=specific,
        )

    # ------------------------------------------------------------------ helpers
    def _top_de_term(self, X, codes, sizes, decoded_ctrl, truth) -> np.ndarray:
        """Leave-one-out credit of the group pearson on each group's top changed genes."""
        if self.weights.top_de <= 0:
            return np.zeros(len(codes))
        mask = np.zeros_like(truth, dtype=bool)
        mask[np.arange(len(truth))[:, None], top_k_changed_genes(truth, self.top_k)] = True
        top = group_pearson_with_leave_one_out(X, codes, decoded_ctrl, truth, gene_mask=mask)
        return self._credit(top.group, top.leave_one_out, codes, sizes)

    def _specific_term(self, X, codes, first, sizes, references, cell_context):
        """Credit of the perturbation-specific group pearson (change relative to the context's
        mean training change) and its defined group values; ``(zeros, None)`` without one."""
        if self.train_mean_deltas is None:
            return np.zeros(len(codes)), None
        perturbed, control, decoded_ctrl = references
        m = context_rows(self.train_mean_deltas, cell_context, first)
        spec = group_pearson_with_leave_one_out(
            X, codes, np.maximum(decoded_ctrl + m, 0.0), perturbed - np.maximum(control + m, 0.0)
        )
        return self._credit(spec.group, spec.leave_one_out, codes, sizes), spec.group[spec.defined]

    def _credit(self, group, loo, codes, sizes) -> np.ndarray:
        value = group[codes]
        if self.credit == "group":
            return value
        g = sizes[codes]
        pseudo = g * value - (g - 1.0) * loo
        return np.clip(pseudo, -self.pseudo_clip, self.pseudo_clip)

    def _reference_rows(self, column, first: np.ndarray, name: str) -> np.ndarray:
        try:
            rows = np.asarray([column[i] for i in first], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"column {name!r} must hold one list of {self.n_genes} numbers per row: {err}"
            ) from None
        if rows.ndim != 2 or rows.shape[1] != self.n_genes:
            raise ValueError(
                f"column {name!r} has rows of shape {rows.shape[1:]}; the decoder's vocabulary "
                f"has {self.n_genes} genes. Use the decoder saved with the data set."
            )
        if not np.all(np.isfinite(rows)):
            raise ValueError(f"column {name!r} contains NaN or infinite values.")
        return rows

    def _unclosed(self, report, completion_ids) -> np.ndarray:
        marked = np.asarray(report.marked, dtype=bool)
        unclosed = marked & ~np.asarray(report.closed, dtype=bool)
        if self.end_token_ids is not None and completion_ids is not None:
            ended = np.fromiter(
                (any(int(t) in self.end_token_ids for t in ids) for ids in completion_ids),
                dtype=bool,
                count=len(completion_ids),
            )
            # a text marker that closed, or an end token, finishes the cell
            finished = ended | (marked & ~unclosed)
            return (~finished).astype(np.float64)
        if not marked.any() and len(marked) and not self._warned_unmarked:
            self._warned_unmarked = True
            logger.warning(
                "no completion contains a <cell> marker, so a missing </cell> cannot be seen "
                "(TRL decodes with skip_special_tokens=True). Pass end_token_ids= to "
                "GroupFidelityReward to penalise completions that hit the length cap."
            )
        return unclosed.astype(np.float64)

    def _distribution(self, X, codes, first, reference_sentences):
        n = X.shape[0]
        pseudo = np.zeros(n)
        group_value = np.full(n, np.nan)
        refs = [self._reference_cells(reference_sentences[i]) for i in first]
        unique: dict[int, int] = {}
        prepared: list[ReferenceCells] = []
        for ref in refs:
            if ref is not None and id(ref) not in unique:
                unique[id(ref)] = len(prepared)
                prepared.append(ref)
        if not prepared:
            return pseudo, group_value
        dense = [ref.X.toarray().astype(np.float32) for ref in prepared]
        sizes = np.bincount(codes, minlength=len(first))
        order = np.argsort(codes, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        Xs = X[order]
        scored = [g for g, ref in enumerate(refs) if ref is not None]
        # dense blocks of consecutive groups (bounded memory)
        block_rows = max(1, _DENSE_BLOCK_VALUES // max(X.shape[1], 1))
        start = 0
        while start < len(scored):
            stop = start + 1
            while (
                stop < len(scored)
                and bounds[scored[stop] + 1] - bounds[scored[start]] <= block_rows
            ):
                stop += 1
            groups = np.asarray(scored[start:stop])
            rows = np.concatenate([np.arange(bounds[g], bounds[g + 1]) for g in groups])
            values, loo = batched_group_distances(
                Xs[rows].toarray().astype(np.float32, copy=False),
                sizes[groups],
                np.asarray([unique[id(refs[g])] for g in groups]),
                prepared,
                distance=self.distance,
                references_dense=dense,
            )
            original = order[rows]
            size_of_row = np.repeat(sizes[groups], sizes[groups]).astype(np.float64)
            value_of_row = np.repeat(values, sizes[groups])
            group_value[original] = value_of_row
            if self.credit == "group":
                pseudo[original] = value_of_row
            else:
                jack = size_of_row * value_of_row - (size_of_row - 1.0) * loo
                pseudo[original] = np.clip(jack, -self.pseudo_clip, self.pseudo_clip)
            start = stop
        return np.nan_to_num(pseudo), group_value

    def _reference_cells(self, sentences) -> ReferenceCells | None:
        if sentences is None or isinstance(sentences, str):
            return None
        sentences = tuple(sentences)
        key = (len(sentences), hash(sentences))
        cached = self._references.get(key)
        if cached is not None:
            self._references.move_to_end(key)
            return cached if cached is not _NO_REFERENCE else None
        usable = [s for s in sentences if isinstance(s, str) and s.strip()]
        ref = None
        if usable:
            decoded, _ = self.decoder.decode(usable, max_genes=self.max_genes)
            ref = ReferenceCells.from_matrix(decoded)
        self._references[key] = ref if ref is not None else _NO_REFERENCE
        if len(self._references) > self.reference_cache_size:
            self._references.popitem(last=False)
        return ref
