"""Argument dataclasses of the ``ppo`` and ``grpo`` stages.

They subclass TRL's own (:class:`trl.ScriptArguments`, ``PPOConfig``, :class:`trl.GRPOConfig`,
:class:`trl.RLOOConfig`) and add only what cell RL needs, so every TRL / transformers flag
(``--learning_rate``, ``--kl_coef``, ``--beta``, ``--use_peft``, ``--report_to``, ...) works
unchanged from a ``--config`` YAML or the command line; a flag overrides the YAML.

The policy is always ``--model_name_or_path`` (TRL's :class:`~trl.ModelConfig`): an SFT model
directory. ``--use_peft`` trains LoRA adapters on it instead of all weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from trl import GRPOConfig, RLOOConfig, ScriptArguments
from trl.experimental.ppo import PPOConfig

from cellrlhf.trl_compat import auto_bf16

__all__ = [
    "RL_TRAINERS",
    "REWARD_SOURCES",
    "DISTANCES",
    "CellRLScriptArguments",
    "CellGRPOScriptArguments",
    "CellPPOConfig",
    "CellGRPOConfig",
    "CellRLOOConfig",
]

RL_TRAINERS = ("grpo", "rloo")
REWARD_SOURCES = ("fidelity", "model")
DISTANCES = ("energy", "mmd")


@dataclass
class CellRLScriptArguments(ScriptArguments):
    """Data and held-out monitoring shared by PPO, GRPO and RLOO.

    The held-out monitor is the guard against reward hacking: every ``heldout_every_steps``
    steps it samples ``heldout_num_samples`` cells for each held-out prompt and logs the true
    group fidelity, validity, diversity, distance to real cells, the learned reward and the KL
    to the reference. The saved policy is the one with the best held-out fidelity among the
    evaluations whose diversity stayed intact, never the one with the best reward.
    """

    dataset_dir: str | None = field(
        default=None,
        metadata={
            "help": "Dataset directory written by `cellrlhf data build` (its rl/ DatasetDict gives the "
            "prompts and the real reference profiles). Required."
        },
    )
    dataset_train_split: str = field(
        default="train", metadata={"help": "rl/ split whose prompts are trained on."}
    )
    dataset_test_split: str | None = field(
        default=None,
        metadata={
            "help": "rl/ split of held-out perturbations the monitor evaluates and selects the policy on "
            "(never trained on). Default: `validation` when the data set holds out validation "
            "perturbations (data config `split.n_validation_perturbations`), else `test`, whose "
            "kept-policy figures are then optimistic (chosen on the perturbations they report)."
        },
    )
    max_train_prompts: int | None = field(
        default=None,
        metadata={
            "help": "Use at most this many training prompts (seeded subsample; demos, tests)."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Drop training prompts longer than this many tokens (with a warning); no limit if unset."
        },
    )
    heldout_every_steps: int = field(
        default=10,
        metadata={
            "help": "Evaluate on held-out prompts every N optimizer steps (also before training and at the "
            "end). 0 turns the monitor off: then the last policy is saved, unchecked."
        },
    )
    heldout_num_samples: int = field(
        default=64,
        metadata={
            "help": "Cells generated per held-out prompt for its pseudo-bulk. Fewer than 64 gives noisy "
            "fidelity (pilot: 8/16/32/64 cells -> 0.21/0.24/0.25/0.37)."
        },
    )
    heldout_max_prompts: int | None = field(
        default=None,
        metadata={
            "help": "Evaluate at most this many held-out prompts (seeded subsample); all if unset."
        },
    )
    heldout_batch_size: int = field(
        default=64, metadata={"help": "Sequences per generate / forward call in the monitor."}
    )
    heldout_temperature: float | None = field(
        default=None,
        metadata={
            "help": "Sampling temperature of the monitor (default: the trainer's temperature)."
        },
    )
    heldout_seed: int = field(
        default=1234,
        metadata={
            "help": "Sampling seed of the monitor; every evaluation reuses it (common random numbers) and "
            "the training RNG streams are left untouched."
        },
    )
    heldout_top_k_de: int = field(
        default=20,
        metadata={
            "help": "Also report pearson_delta on the k genes that change most in the real data."
        },
    )
    heldout_distance: str = field(
        default="energy",
        metadata={
            "help": "Distance between generated and real cells: `energy` (coefficient in [0, 1]) or `mmd`.",
            "choices": list(DISTANCES),
        },
    )
    min_distinct_ratio: float = field(
        default=0.9,
        metadata={
            "help": "Diversity is intact while the distinct-sentence fraction stays >= this ratio times the "
            "SFT model's (evaluated before training)."
        },
    )
    min_entropy_ratio: float = field(
        default=0.9,
        metadata={
            "help": "... and the gene-token entropy stays >= this ratio times the SFT model's."
        },
    )
    early_stopping_patience: int | None = field(
        default=5,
        metadata={
            "help": "Stop after this many held-out evaluations without a better eligible fidelity (a "
            "collapsed evaluation never counts as better). None: never stop early."
        },
    )
    heldout_selection_metric: str = field(
        default="auto",
        metadata={
            "help": "Held-out metric the kept policy is chosen on: `pearson_delta`, "
            "`pearson_specific` (the change relative to the mean training change of the context, "
            "which the mean baseline scores 0 on) or `auto`: pearson_specific when the reward "
            "weighs the specific term (specific_weight > 0) and every monitored prompt's context "
            "has training perturbations, else pearson_delta.",
            "choices": ["auto", "pearson_delta", "pearson_specific"],
        },
    )
    early_stopping_min_delta: float = field(
        default=0.0,
        metadata={"help": "An evaluation is better only when fidelity rises by more than this."},
    )
    constrain_cells: bool = field(
        default=False,
        metadata={
            "help": "Train the constrained policy: each answer is one cell and its end token (it "
            "opens with <cell>; inside, only measured genes not yet written, or </cell> after the "
            "first gene; after </cell>, only the end of turn), applied when sampling and in every "
            "log-probability (policy, old policy, reference), so RL optimises exactly the "
            "constrained distribution and every finished answer is a fully valid cell. Needs gene "
            "tokens. Recorded in cellrlhf.json: `cellrlhf evaluate` / `predict` then sample the "
            "policy under the same grammar (--no-constrain-cells to see its own samples)."
        },
    )
    select_best: bool = field(
        default=True,
        metadata={
            "help": "Save the policy with the best held-out fidelity (diversity intact) as the output model; "
            "the last policy goes to <output_dir>/last. False: save the last policy."
        },
    )

    def __post_init__(self) -> None:
        if self.heldout_every_steps < 0:
            raise ValueError("heldout_every_steps must be >= 0 (0 turns the monitor off).")
        if self.heldout_num_samples < 2:
            raise ValueError(
                f"heldout_num_samples={self.heldout_num_samples}; a pseudo-bulk needs several cells "
                "(64 or more for stable fidelity)."
            )
        if self.heldout_batch_size < 1:
            raise ValueError("heldout_batch_size must be >= 1.")
        if self.heldout_distance not in DISTANCES:
            raise ValueError(
                f"heldout_distance={self.heldout_distance!r}; choose one of {DISTANCES}."
            )
        from cellrlhf.ppo.model_selection import SELECTION_METRICS

        if self.heldout_selection_metric not in SELECTION_METRICS:
            raise ValueError(
                f"heldout_selection_metric={self.heldout_selection_metric!r}; choose one of "
                f"{SELECTION_METRICS}."
            )
        for name in ("min_distinct_ratio", "min_entropy_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value}; it must be in [0, 1].")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError("early_stopping_patience must be >= 1 (or unset to never stop early).")
        if self.max_train_prompts is not None and self.max_train_prompts < 1:
            raise ValueError("max_train_prompts must be >= 1 when set.")


@dataclass
class CellGRPOScriptArguments(CellRLScriptArguments):
    """GRPO / RLOO: which trainer, and which rewards.

    ``rewards`` lists the reward functions, weighted by TRL's ``reward_weights``:
    ``fidelity`` is the programmatic group fidelity reward (pseudo-bulk of each prompt's
    completions against the real data, leave-one-out credit, duplicate and missing-end
    penalties); ``model`` is the learned reward model at ``reward_model_path``. Both together
    make a weighted mix.
    """

    trainer: str = field(
        default="grpo",
        metadata={"help": "TRL trainer: `grpo` or `rloo`.", "choices": list(RL_TRAINERS)},
    )
    rewards: list[str] = field(
        default_factory=lambda: ["fidelity"],
        metadata={
            "help": "Reward functions: `fidelity` (programmatic group fidelity), `model` (learned reward "
            "model at --reward_model_path), or both (mixed with --reward_weights)."
        },
    )
    reward_model_path: str | None = field(
        default=None,
        metadata={
            "help": "Saved reward model directory (`cellrlhf reward`). Needed for the `model` reward; when set "
            "with `fidelity` only, it is still scored by the held-out monitor (learned vs true reward)."
        },
    )
    fidelity_reward_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments of the fidelity reward (JSON on the command line), e.g. "
            '\'{"duplicate_penalty": 1.0, "no_end_penalty": 0.5}\'.'
        },
    )
    specific_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the fidelity reward's perturbation-specific term: the group's change "
            "relative to the mean training change of its cell context vs the real one (0: off)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.trainer not in RL_TRAINERS:
            raise ValueError(f"trainer={self.trainer!r}; choose one of {RL_TRAINERS}.")
        if isinstance(self.rewards, str):
            self.rewards = [self.rewards]
        unknown = [r for r in self.rewards if r not in REWARD_SOURCES]
        if unknown or not self.rewards:
            raise ValueError(
                f"rewards={self.rewards}; each entry must be one of {REWARD_SOURCES} (at least one)."
            )
        if len(set(self.rewards)) != len(self.rewards):
            raise ValueError(f"rewards={self.rewards} lists a reward twice.")
        if "model" in self.rewards and not self.reward_model_path:
            raise ValueError(
                "rewards includes `model` but no --reward_model_path was given: pass the directory "
                "written by `cellrlhf reward`."
            )
        if isinstance(self.fidelity_reward_kwargs, str):
            try:
                self.fidelity_reward_kwargs = json.loads(self.fidelity_reward_kwargs)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"fidelity_reward_kwargs is not valid JSON ({err}): "
                    f"{self.fidelity_reward_kwargs!r}."
                ) from None
        if self.fidelity_reward_kwargs is not None and not isinstance(
            self.fidelity_reward_kwargs, dict
        ):
            raise ValueError(
                "fidelity_reward_kwargs must be a mapping of argument names to values."
            )


_ANSWER_BUDGET_HELP = (
    "Answer budget in new tokens. Unset: derived from the data's cells (99th percentile of the "
    "training perturbations' real cells written as answers, markup and end token included), "
    "recorded in cellrlhf.json. A set budget that cuts more than 1 percent of those cells is "
    "warned about at RL start, with the budget that would fit."
)


@dataclass
class CellPPOConfig(PPOConfig):
    """Training arguments of ``ppo``: TRL's ``PPOConfig`` with cell defaults.

    Differences from TRL's defaults: the policy stops at the tokenizer's end token
    (``stop_token="eos"``); answers that never end lose ``missing_eos_penalty=0.5``;
    TRL's debug sample generations are off (the held-out monitor replaces them); the answer
    budget ``response_length`` is derived from the data's cells when unset (as GRPO's
    ``max_completion_length``); ``bf16`` is
    on only where CUDA is; the paths of the SFT and reward models have no hub default; a re-run
    resumes from the latest complete checkpoint unless ``--overwrite_output_dir``.
    """

    sft_model_path: str | None = field(
        default=None,
        metadata={"help": "Alias of --model_name_or_path (the SFT policy directory)."},
    )
    response_length: int | None = field(default=None, metadata={"help": _ANSWER_BUDGET_HELP})
    reward_model_path: str | None = field(
        default=None,
        metadata={"help": "Saved reward model directory (`cellrlhf reward`). Required."},
    )
    value_model_path: str | None = field(
        default=None,
        metadata={"help": "Initial value model (default: the reward model, as in TRL's recipe)."},
    )
    stop_token: str | None = field(
        default="eos",
        metadata={"help": "`eos`: answers end at the tokenizer's end token (the chat template's)."},
    )
    missing_eos_penalty: float | None = field(
        default=0.5,
        metadata={
            "help": "Subtracted from the reward of answers that hit the length cap unfinished."
        },
    )
    num_sample_generations: int = field(
        default=0,
        metadata={
            "help": "TRL's debug sample tables; the held-out monitor replaces them (0: off)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over even when output_dir holds PPO checkpoints (saved every "
            "save_steps updates; by default a re-run resumes from the latest complete one; "
            "--resume_from_checkpoint none does the same as this flag)."
        },
    )

    def __post_init__(self) -> None:
        auto_bf16(self)
        super().__post_init__()


@dataclass
class _GroupRLFields:
    """What cellrlhf changes in TRL's GRPO and RLOO configs (listed before their base class, so
    these fields win)."""

    max_completion_length: int | None = field(
        default=None, metadata={"help": _ANSWER_BUDGET_HELP}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over even when output_dir holds checkpoints (by default a re-run resumes "
            "from the latest complete checkpoint there; --resume_from_checkpoint none does the same "
            "as this flag)."
        },
    )

    def __post_init__(self) -> None:
        auto_bf16(self)
        super().__post_init__()


@dataclass
class CellGRPOConfig(_GroupRLFields, GRPOConfig):
    """Training arguments of ``grpo --trainer grpo``: TRL's :class:`~trl.GRPOConfig`.

    Differences from TRL's defaults: ``bf16`` is on only where CUDA is; the answer budget
    ``max_completion_length`` is derived from the data when unset; a re-run resumes from the
    latest checkpoint unless ``--overwrite_output_dir``.
    """


@dataclass
class CellRLOOConfig(_GroupRLFields, RLOOConfig):
    """Training arguments of ``grpo --trainer rloo``: TRL's :class:`~trl.RLOOConfig`.

    Differences from TRL's defaults: as :class:`CellGRPOConfig`.
    """
