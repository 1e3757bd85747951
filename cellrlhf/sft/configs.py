"""Argument dataclasses of the ``pretrain`` and ``sft`` scripts.

They subclass TRL's own (:class:`trl.ScriptArguments`, :class:`trl.ModelConfig`,
:class:`trl.SFTConfig`) and add only what cell language models need, so every TRL / transformers
flag (``--learning_rate``, ``--use_peft``, ``--lora_target_modules``, ``--report_to``, ...) works
unchanged, from a ``--config`` YAML or the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, SFTConfig

from cellrlhf.trl_compat import auto_bf16

__all__ = [
    "TOKENIZER_MODES",
    "PEFT_SAVE_MODES",
    "CellScriptArguments",
    "CellModelArguments",
    "CellSFTConfig",
    "CellPretrainConfig",
]

TOKENIZER_MODES = ("auto", "gene_tokens", "added_gene_tokens", "genes_as_text")
PEFT_SAVE_MODES = ("merged", "adapter")


@dataclass
class CellScriptArguments(ScriptArguments):
    """Where the training data comes from: a dataset directory written by ``cellrlhf data``."""

    dataset_dir: str | None = field(
        default=None,
        metadata={
            "help": "Dataset directory written by `cellrlhf data build` (manifest.json, gene_vocab.json, "
            "expression_decoder.json, pretrain/, sft/). Required."
        },
    )
    dataset_test_split: str = field(
        default="validation",
        metadata={
            "help": "Split used for evaluation during training (`validation` keeps `test` unseen)."
        },
    )
    eval_holdout_fraction: float = field(
        default=0.02,
        metadata={
            "help": "Pretraining only: fraction of the corpus held out for evaluation when the corpus has no "
            "validation split (seeded by --seed)."
        },
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "Use at most this many training examples (seeded subsample; for demos and tests)."
        },
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={
            "help": "Use at most this many evaluation examples for the eval loss / perplexity."
        },
    )
    tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "SFT only: train and evaluate on these tasks (the dataset's `task` column); all if unset."
        },
    )


@dataclass
class CellModelArguments(ModelConfig):
    """Which model to train: a fresh one from a config preset, or any causal LM checkpoint."""

    model_config: str | None = field(
        default=None,
        metadata={
            "help": "Build a fresh model from this YAML (configs/model/*.yaml: tiny, small, llama-100m, "
            "llama-400m, llama-1b) with the cell tokenizer. Mutually exclusive with --model_name_or_path."
        },
    )
    tokenizer_mode: str = field(
        default="auto",
        metadata={
            "help": "How genes become tokens: `gene_tokens` (fresh cell tokenizer, one token per gene), "
            "`added_gene_tokens` (a pretrained LM's tokenizer plus one new token per gene, initialised from the "
            "mean of the LM's embeddings of the symbol's text pieces), `genes_as_text` (Cell2Sentence style, "
            "genes stay text). `auto`: gene_tokens for --model_config, the saved mode for cellrlhf models, "
            "added_gene_tokens for other checkpoints.",
            "choices": list(TOKENIZER_MODES),
        },
    )
    gene_embedding_init: str = field(
        default="mean_pieces",
        metadata={
            "help": "Initial embeddings of gene tokens added to a pretrained LM: `mean_pieces` (mean of the "
            "embeddings of the symbol's text pieces) or `default` (the library's resize initialisation).",
            "choices": ["mean_pieces", "default"],
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # a YAML value can be cleared on the command line: --model_name_or_path none
        for name in ("model_config", "model_name_or_path"):
            if str(getattr(self, name)).strip().lower() in {"", "none", "null"}:
                setattr(self, name, None)
        if self.model_config and self.model_name_or_path:
            raise ValueError(
                "Both --model_config and --model_name_or_path are set: pass --model_config to build a fresh "
                "model, or --model_name_or_path to start from a checkpoint, not both."
            )
        if self.tokenizer_mode not in TOKENIZER_MODES:
            raise ValueError(
                f"tokenizer_mode={self.tokenizer_mode!r}; choose one of {TOKENIZER_MODES}."
            )
        if self.model_config and self.tokenizer_mode not in ("auto", "gene_tokens"):
            raise ValueError(
                f"tokenizer_mode={self.tokenizer_mode!r} needs a pretrained tokenizer: a model built from "
                "--model_config always uses the cell tokenizer (gene_tokens). Use --model_name_or_path instead."
            )


@dataclass
class CellSFTConfig(SFTConfig):
    """Training arguments of ``sft``: TRL's :class:`~trl.SFTConfig` plus cell-specific fields.

    Differences from TRL's defaults: ``assistant_only_loss`` is on (loss on the assistant's turns
    only) and ``bf16`` defaults to on only where a CUDA device is present.
    """

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over even when output_dir holds checkpoints (by default a run resumes "
            "from the latest complete checkpoint there; --resume_from_checkpoint none does the "
            "same as this flag)."
        },
    )
    assistant_only_loss: bool = field(
        default=True,
        metadata={
            "help": "Compute the loss on the assistant's turns only (the chat template marks them)."
        },
    )
    perturbation_dropout: float = field(
        default=0.1,
        metadata={
            "help": "Probability with which each perturbation target in a training prompt is replaced by "
            "<unk_pert>, so the model learns a response for targets it has never seen. Resampled every epoch."
        },
    )
    repeat_unlikelihood_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of an unlikelihood loss against writing a gene twice in one cell (Welleck "
            "et al., 2020): at each trained position inside <cell> ... </cell>, -log(1 - probability "
            "of the genes already written). Duplicates are small models' main invalid output; this "
            "raises the model's own valid gene fraction. 0 turns it off. Needs one token per gene."
        },
    )
    eval_generation_samples: int = field(
        default=32,
        metadata={
            "help": "Held-out examples answered by generation at each evaluation (cell type accuracy, validity "
            "of generated cell sentences, perturbation fidelity). 0 turns generation metrics off."
        },
    )
    eval_generation_max_new_tokens: int = field(
        default=256,
        metadata={"help": "Token budget of each generated answer during evaluation."},
    )
    eval_generation_batch_size: int = field(
        default=16,
        metadata={"help": "Prompts generated together during evaluation."},
    )
    eval_generation_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Sampling temperature of generated cell sentences during evaluation (0: greedy). Text "
            "answers (cell type) are always greedy."
        },
    )
    eval_generation_constrained: bool = field(
        default=False,
        metadata={
            "help": "Also generate the held-out cell answers under constrained decoding (inside <cell> ... "
            "</cell> only measured genes, each at most once, then </cell>) and log their validity as "
            "gen_constrained_* beside the unconstrained gen_* (which is what RL sees). Needs gene tokens "
            "(not tokenizer_mode genes_as_text). Doubles the generation time of cell answers."
        },
    )
    eval_fidelity_perturbations: int = field(
        default=4,
        metadata={
            "help": "Perturbations of the held-out slice that get a fidelity figure (pearson_delta of the "
            "pseudo-bulk of generated cells vs the real one, from the dataset's rl/ references). 0: off."
        },
    )
    eval_fidelity_cells: int = field(
        default=64,
        metadata={
            "help": "Cells sampled per perturbation for the fidelity pseudo-bulk (>= 64 for stable figures)."
        },
    )
    peft_save: str = field(
        default="merged",
        metadata={
            "help": "With --use_peft: `merged` saves full weights with the adapters merged in, `adapter` saves "
            "the adapters only (load with the base model).",
            "choices": list(PEFT_SAVE_MODES),
        },
    )

    def __post_init__(self) -> None:
        auto_bf16(self)
        if self.repeat_unlikelihood_weight > 0 and self.loss_type is None:
            self.loss_type = "nll"  # the repeat term reads the logits, which chunked_nll skips
        super().__post_init__()
        if self.repeat_unlikelihood_weight > 0 and (
            self.loss_type == "chunked_nll" or self.use_liger_kernel
        ):
            raise ValueError(
                "repeat_unlikelihood_weight > 0 needs the model's logits: set loss_type: nll and "
                "use_liger_kernel: false, or repeat_unlikelihood_weight: 0."
            )
        if not self.repeat_unlikelihood_weight >= 0.0:
            raise ValueError(
                f"repeat_unlikelihood_weight={self.repeat_unlikelihood_weight}; it must be >= 0 "
                "(0 turns the repeat penalty off)."
            )
        if not 0.0 <= self.perturbation_dropout < 1.0:
            raise ValueError(
                f"perturbation_dropout={self.perturbation_dropout}; it must be in [0, 1)."
            )
        if self.peft_save not in PEFT_SAVE_MODES:
            raise ValueError(f"peft_save={self.peft_save!r}; choose one of {PEFT_SAVE_MODES}.")
        for name in (
            "eval_generation_samples",
            "eval_fidelity_perturbations",
            "eval_fidelity_cells",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0.")


@dataclass
class CellPretrainConfig(CellSFTConfig):
    """Training arguments of ``pretrain``: packed causal-LM training on cell sentences."""

    assistant_only_loss: bool = field(
        default=False,
        metadata={"help": "Pretraining texts are not chats: the loss covers every token."},
    )
    packing: bool = field(
        default=True,
        metadata={
            "help": "Pack cell sentences into blocks of --max_length tokens. With the default `bfd` strategy "
            "sentences never attend to each other (position ids restart per sentence)."
        },
    )
    perturbation_dropout: float = field(
        default=0.0,
        metadata={"help": "Not used in pretraining (texts are not prompts); must stay 0."},
    )
    eval_generation_max_new_tokens: int = field(
        default=256,
        metadata={
            "help": "Token budget of each free-running cell sentence generated during evaluation."
        },
    )
    eval_fidelity_perturbations: int = field(
        default=0,
        metadata={"help": "Not used in pretraining (no perturbation prompts)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.perturbation_dropout:
            raise ValueError("perturbation_dropout applies to SFT prompts; pretraining takes 0.")
