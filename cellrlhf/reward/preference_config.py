"""Settings of ``cellrlhf preferences``: what is sampled, how it is scored and paired.

:class:`PreferenceConfig` is parsed by TrlParser (``--config`` YAML, flags override it) in
:mod:`cellrlhf.reward.preferences_cli` and read by
:func:`~cellrlhf.reward.preferences.build_preferences`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from cellrlhf.reward.hard_negatives import HARD_NEGATIVE_KINDS

__all__ = ["CHOSEN_MODES", "PreferenceConfig"]

CHOSEN_MODES = ("real", "best_sample")


@dataclass
class PreferenceConfig:
    """Arguments of ``cellrlhf preferences`` (``--config`` YAML, flags override it)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "SFT model directory to sample completions from (written by `cellrlhf sft`). Required."
        },
    )
    dataset_dir: str | None = field(
        default=None,
        metadata={
            "help": "Dataset directory written by `cellrlhf data build` (with rl/ and splits.json). Required."
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where pairs/, completions/ and manifest.json are written. Required."},
    )
    train_split: str = field(
        default="train", metadata={"help": "rl/ split that yields the training pairs."}
    )
    test_split: str = field(
        default="test",
        metadata={
            "help": "rl/ split of held-out perturbations that yields the evaluation pairs ('' to skip)."
        },
    )
    num_completions: int = field(
        default=64,
        metadata={
            "help": "Completions sampled per prompt: the group whose pseudo-bulk is scored (the pilot needed "
            ">= 64 cells for a stable pseudo-bulk)."
        },
    )
    generation_batch_size: int = field(
        default=256, metadata={"help": "Sequences generated together (per process)."}
    )
    max_new_tokens: int = field(
        default=256,
        metadata={
            "help": "Token budget of each completion; checked against the training cells written "
            "as answers (a budget that cuts more than 1 percent of them is warned about, with one "
            "that fits) and recorded in manifest.json."
        },
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (> 0)."})
    constrain_cells: bool = field(
        default=False,
        metadata={
            "help": "Sample every completion under the single-cell answer grammar (one valid cell, then "
            "the end token), as a policy trained with --constrain_cells true samples, so a reward model "
            "learns to rank the answers it will score in RL. Needs one token per gene."
        },
    )
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0: off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (1: off)."})
    seed: int = field(
        default=0, metadata={"help": "Seed of sampling, pair selection and hard negatives."}
    )
    max_prompts: int | None = field(
        default=None,
        metadata={"help": "Use at most this many prompts per split (seeded subsample)."},
    )
    min_score_margin: float = field(
        default=0.1,
        metadata={"help": "Sampled pairs need score(chosen) - score(rejected) above this margin."},
    )
    max_pairs_per_prompt: int = field(
        default=32,
        metadata={
            "help": "Sampled pairs kept per prompt (drawn at random among qualifying pairs)."
        },
    )
    hard_negative_kinds: list[str] = field(
        default_factory=lambda: list(HARD_NEGATIVE_KINDS),
        metadata={
            "help": f"Hard negatives to add, any of {list(HARD_NEGATIVE_KINDS)} (empty list: none)."
        },
    )
    hard_negatives_per_kind: int = field(
        default=2, metadata={"help": "Hard negatives of each kind per prompt."}
    )
    hard_negative_chosen: str = field(
        default="real",
        metadata={
            "help": "Chosen answer of hard-negative pairs: `real` (a real cell of the perturbation) or "
            "`best_sample` (the prompt's best-scoring sample).",
            "choices": list(CHOSEN_MODES),
        },
    )
    min_de_genes: int = field(
        default=1,
        metadata={
            "help": "A perturbation with at least this many DE genes acts: it gets `control` negatives."
        },
    )
    max_other_delta_pearson: float = field(
        default=0.5,
        metadata={
            "help": "`other_perturbation` negatives come from perturbations whose response correlates with "
            "the prompt's below this value."
        },
    )
    reward_weights: dict | str | None = field(
        default=None,
        metadata={
            "help": "Weights of the group reward's terms (RewardWeights: fidelity, top_de, specific, "
            "distribution, duplicates, unclosed, unknown, empty), as a mapping in YAML or a JSON "
            "string; `specific` weighs the change relative to the mean training change of the "
            "context, as GRPO's specific_weight. Default: the reward's defaults."
        },
    )
    reward_credit: str = field(
        default="jackknife",
        metadata={
            "help": "Credit of each completion: `jackknife` (leave-one-out) or `group`.",
            "choices": ["jackknife", "group"],
        },
    )
    reward_distance: str = field(
        default="energy",
        metadata={
            "help": "Realism distance to real cells: `energy` or `mmd`.",
            "choices": ["energy", "mmd"],
        },
    )
    reward_top_k: int = field(default=20, metadata={"help": "Genes of the reward's top-DE term."})
    reward_pseudo_clip: float = field(
        default=3.0, metadata={"help": "Bound on leave-one-out pseudo-values."}
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Dtype of the model for sampling.",
            "choices": ["float32", "bfloat16", "float16"],
        },
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self) -> None:
        if isinstance(self.reward_weights, str):
            self.reward_weights = (
                json.loads(self.reward_weights) if self.reward_weights.strip() else None
            )
        if self.num_completions < 2:
            raise ValueError(
                f"num_completions={self.num_completions}; a group needs at least 2 completions."
            )
        if self.generation_batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("generation_batch_size and max_new_tokens must be >= 1.")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature}; sampling needs a temperature > 0.")
        if (
            self.min_score_margin < 0
            or self.max_pairs_per_prompt < 0
            or self.hard_negatives_per_kind < 0
        ):
            raise ValueError(
                "min_score_margin, max_pairs_per_prompt and hard_negatives_per_kind must be >= 0."
            )
        unknown = set(self.hard_negative_kinds) - set(HARD_NEGATIVE_KINDS)
        if unknown:
            raise ValueError(
                f"hard_negative_kinds has unknown kinds {sorted(unknown)}; choose from {HARD_NEGATIVE_KINDS}."
            )
        if self.hard_negative_chosen not in CHOSEN_MODES:
            raise ValueError(
                f"hard_negative_chosen={self.hard_negative_chosen!r}; choose one of {CHOSEN_MODES}."
            )

    def reward(self, decoder, train_mean_deltas=None):
        """The :class:`GroupFidelityReward` these settings describe (``train_mean_deltas``: the
        reference of its perturbation-specific term, context -> mean training change)."""
        from cellrlhf.reward.fidelity_reward import GroupFidelityReward

        return GroupFidelityReward(
            decoder,
            train_mean_deltas=train_mean_deltas,
            weights=self.reward_weights,
            credit=self.reward_credit,
            top_k=self.reward_top_k,
            distance=self.reward_distance,
            pseudo_clip=self.reward_pseudo_clip,
            gather=False,
        )
