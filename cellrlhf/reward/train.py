"""Train a reward model on cell preference pairs with TRL's ``RewardTrainer``.

The reward model is the SFT checkpoint with a one-output sequence-classification head (the
backbone's weights load, the ``score`` head is new), sharing the SFT tokenizer and chat template,
trained with the Bradley-Terry loss of TRL's ``RewardTrainer`` on the pairs written by
``cellrlhf preferences``. LoRA is optional (``--use_peft``; the adapters are merged before saving).

The saved directory follows the project's model contract (``config.json``, ``model.safetensors``,
tokenizer and chat template, ``gene_vocab.json``, ``expression_decoder.json``, ``cellrlhf.json``
with ``"stage": "reward"``, ``training_config.yaml``, ``data_manifest.json``), so PPO can load it
as its reward model and to initialise its value model. After training, the model is evaluated on
the held-out perturbations (``reward_model_eval.json`` / ``.png``, see
:mod:`cellrlhf.reward.reward_model_eval`).

Run it as ``accelerate launch reward.py --config configs/reward/<name>.yaml`` (any accelerate or
DeepSpeed config) or ``cellrlhf reward --config ...``; every TRL / transformers flag overrides the
YAML on the command line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import ModelConfig, RewardConfig

from cellrlhf.data.layout import EVIDENCE_INDEX_FILENAME
from cellrlhf.trl_compat import auto_bf16

__all__ = [
    "check_kept_pairs",
    "CellRewardConfig",
    "SFTModelFiles",
    "make_parser",
    "training_pairs",
    "peft_config_for_reward",
    "main",
    "cli",
]

logger = logging.getLogger(__name__)


@dataclass
class CellRewardConfig(RewardConfig):
    """Training arguments of ``reward``: TRL's :class:`~trl.RewardConfig` plus cell fields.

    Differences from TRL's defaults: ``bf16`` defaults to on only where a CUDA device is present.
    """

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over even when output_dir holds checkpoints (by default a run resumes "
            "from the latest complete checkpoint there; --resume_from_checkpoint none does the "
            "same as this flag)."
        },
    )
    preferences_dir: str | None = field(
        default=None,
        metadata={
            "help": "Preference directory written by `cellrlhf preferences` (manifest.json, pairs/ with "
            "train/test splits, completions/). Required."
        },
    )
    train_split: str = field(
        default="train",
        metadata={
            "help": "Split of the pairs to train on (its perturbations are the RL training perturbations)."
        },
    )
    eval_split: str = field(
        default="test",
        metadata={
            "help": "Split of held-out perturbations used for the final evaluation (and for eval during "
            "training when eval_strategy is not 'no'; monitoring only, never model selection)."
        },
    )
    pair_kinds: list[str] | None = field(
        default=None,
        metadata={
            "help": "Train on these pair kinds only (sampled, control, other_perturbation, shuffled); all when "
            "unset. Evaluation always reports every kind."
        },
    )
    max_train_pairs: int | None = field(
        default=None,
        metadata={
            "help": "Use at most this many training pairs (seeded subsample; demos and tests)."
        },
    )
    score_margin_scale: float = field(
        default=0.0,
        metadata={
            "help": "When > 0, train with TRL's margin loss, margin = scale * (score_chosen - score_rejected) "
            "(clipped at 0): pairs whose true scores differ more must be separated more."
        },
    )
    final_eval: bool = field(
        default=True,
        metadata={
            "help": "After training, evaluate on the held-out split (pairwise accuracy, Spearman with the true "
            "score) and write reward_model_eval.json / .png into output_dir."
        },
    )
    final_eval_max_pairs: int | None = field(
        default=None,
        metadata={"help": "Evaluate at most this many held-out pairs (default: all)."},
    )
    final_eval_max_completions: int | None = field(
        default=None,
        metadata={"help": "Correlate on at most this many held-out completions (default: all)."},
    )

    def __post_init__(self) -> None:
        auto_bf16(self)
        super().__post_init__()
        if self.score_margin_scale < 0:
            raise ValueError(f"score_margin_scale={self.score_margin_scale}; it must be >= 0.")
        if self.max_train_pairs is not None and self.max_train_pairs < 1:
            raise ValueError("max_train_pairs must be >= 1 when set.")


def check_kept_pairs(n_pairs: int, n_kept: int, max_length: int | None) -> None:
    """Fail or warn when TRL's ``RewardTrainer`` dropped pairs longer than ``max_length``.

    TRL filters such pairs silently; a reward model trained on what is left of long-answer pairs
    learns from a biased sample, and one left with none fails with an obscure error later.
    """
    dropped = n_pairs - n_kept
    if dropped <= 0:
        return
    if n_kept == 0:
        raise ValueError(
            f"all {n_pairs} preference pairs are longer than max_length={max_length} tokens "
            "(prompt + answer), so none is left to train on. Raise --max_length (the SFT model's "
            "max_position_embeddings is the upper bound) or build pairs with shorter answers "
            "(preferences --max_new_tokens)."
        )
    logger.warning(
        "%d of %d preference pairs (%.0f%%) are longer than max_length=%s tokens and were dropped "
        "by the RewardTrainer; raise --max_length to keep them.",
        dropped,
        n_pairs,
        100.0 * dropped / n_pairs,
        max_length,
    )


def make_parser(prog: str | None = None):
    """The ``TrlParser`` of ``reward``: ``--config <yaml>`` plus any flag of the two dataclasses."""
    from cellrlhf.cli_help import CellTrlParser

    return CellTrlParser((CellRewardConfig, ModelConfig), prog=prog)


# --------------------------------------------------------------------------- inputs
def check_sft_model_dir(path: str | None) -> Path:
    """The SFT model directory the reward model starts from, checked for the full weights."""
    if not path:
        raise ValueError(
            "no model given: pass --model_name_or_path <SFT model directory> (or set model_name_or_path "
            "in the --config YAML)."
        )
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"model directory {root} does not exist; train one with `cellrlhf sft` first."
        )
    if not (root / "config.json").exists():
        raise FileNotFoundError(f"{root} has no config.json: it is not a saved model directory.")
    if not any(root.glob("*.safetensors")):
        hint = (
            " It holds LoRA adapters only: re-save the SFT model with --peft_save merged."
            if (root / "adapter_config.json").exists()
            else ""
        )
        raise FileNotFoundError(f"{root} has no .safetensors weights.{hint}")
    return root


def training_pairs(
    pairs,
    *,
    pair_kinds: Sequence[str] | None = None,
    max_pairs: int | None = None,
    margin_scale: float = 0.0,
    seed: int = 0,
):
    """Pairs ready for ``RewardTrainer``: selected kinds, subsample, optional ``margin`` column.

    Only ``prompt``, ``chosen``, ``rejected`` (and ``margin``) are kept: TRL adds a margin term to
    the loss whenever a ``margin`` column is present.
    """
    import numpy as np

    if pair_kinds:
        wanted = set(pair_kinds)
        present = set(pairs.unique("pair_kind"))
        if not wanted & present:
            raise ValueError(
                f"pair_kinds={sorted(wanted)} matches no pair (kinds present: {sorted(present)})."
            )
        pairs = pairs.filter(lambda kind: kind in wanted, input_columns="pair_kind")
    if max_pairs is not None and len(pairs) > max_pairs:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(pairs), size=max_pairs, replace=False))
        pairs = pairs.select(keep.tolist())
    if margin_scale > 0:
        margins = [
            max(0.0, float(margin_scale) * (c - r))
            for c, r in zip(pairs["score_chosen"], pairs["score_rejected"], strict=True)
        ]
        pairs = pairs.add_column("margin", margins)
    keep_cols = {"prompt", "chosen", "rejected", "margin"}
    return pairs.remove_columns([c for c in pairs.column_names if c not in keep_cols])


def peft_config_for_reward(model_args: ModelConfig):
    """TRL's LoRA config, made for a sequence-classification model (trainable ``score`` head)."""
    from trl import get_peft_config

    if model_args.lora_task_type != "SEQ_CLS":
        if model_args.use_peft:
            logger.info(
                "LoRA task type set to SEQ_CLS for the reward model (was %s).",
                model_args.lora_task_type,
            )
        model_args.lora_task_type = "SEQ_CLS"
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        modules = list(peft_config.modules_to_save or [])
        if "score" not in modules:
            peft_config.modules_to_save = [*modules, "score"]
    return peft_config


# --------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class SFTModelFiles:
    """The cell files a reward model inherits from its SFT model directory.

    Offers the paths :func:`cellrlhf.sft.model_dir.save_model_dir` copies into a saved model
    (vocabulary, expression decoder, data manifest, evidence index), read from the SFT directory instead of the
    dataset directory: the reward model speaks exactly the SFT model's genes.
    """

    path: Path

    @property
    def vocab_path(self) -> Path:
        return self.path / "gene_vocab.json"

    @property
    def decoder_path(self) -> Path:
        return self.path / "expression_decoder.json"

    @property
    def manifest_path(self) -> Path:
        return self.path / "data_manifest.json"

    @property
    def evidence_index_path(self) -> Path:
        return self.path / EVIDENCE_INDEX_FILENAME


def reward_model_info(sft_dir: Path, args: CellRewardConfig, n_pairs: int) -> dict[str, Any]:
    """``cellrlhf.json`` content of the reward model (the SFT model's, re-staged)."""
    from cellrlhf import __version__
    from cellrlhf.reward.preference_files import read_preferences_manifest
    from cellrlhf.sft.model_dir import load_model_info

    sft_info = load_model_info(sft_dir)
    inherited = {
        k: v
        for k, v in sft_info.items()
        if k not in {"format", "version", "stage", "peft", "created"}
    }
    preferences = read_preferences_manifest(args.preferences_dir)
    fingerprint = preferences.get("dataset_fingerprint")
    return {
        **inherited,
        "stage": "reward",
        "tokenizer_mode": sft_info.get("tokenizer_mode", "gene_tokens"),
        "base_model": sft_info.get("base_model") or str(sft_dir),
        "sft_model": str(sft_dir),
        "num_labels": 1,
        "preferences": {
            "path": str(args.preferences_dir),
            "train_split": args.train_split,
            "n_pairs": n_pairs,
            "pair_kinds": args.pair_kinds,
            "dataset_fingerprint": fingerprint,
            # how the answers were sampled: PPO warns when its policy samples otherwise
            "constrain_cells": bool(
                (preferences.get("config") or {}).get("constrain_cells", False)
            ),
        },
        "cellrlhf_version": __version__,
    }


def run_config(args: CellRewardConfig, model_args: ModelConfig) -> dict[str, Any]:
    """All arguments of the run as plain data (``training_config.yaml``)."""
    import dataclasses

    payload = {
        "stage": "reward",
        "training_arguments": args.to_dict(),
        "model_arguments": dataclasses.asdict(model_args),
    }
    return json.loads(json.dumps(payload, default=str))


# --------------------------------------------------------------------------- main
def main(args: CellRewardConfig, model_args: ModelConfig) -> dict[str, Any]:
    """Train, save and evaluate a reward model. Returns the final evaluation (or ``{}``)."""
    from trl import RewardTrainer

    from cellrlhf.sft.checkpoints import resolve_resume
    from cellrlhf.sft.model_dir import save_model_dir

    sft_dir = check_sft_model_dir(model_args.model_name_or_path)
    pairs, train, eval_dataset = _load_pairs(args)
    plugin = getattr(args, "deepspeed_plugin", None)
    if model_args.use_peft and plugin is not None and plugin.zero_stage == 3:
        raise ValueError(
            "LoRA reward models are saved merged, which needs the full weights on one process: use "
            "ZeRO-2 (configs/accelerate/deepspeed_zero2.yaml) or train without --use_peft under ZeRO-3."
        )
    tokenizer = _load_tokenizer(sft_dir)
    init_kwargs = dict(args.model_init_kwargs or {})
    init_kwargs.setdefault("dtype", model_args.dtype or "float32")
    init_kwargs.setdefault("use_safetensors", True)
    args.model_init_kwargs = init_kwargs

    logger.info(
        "reward model from %s on %d %s pairs%s",
        sft_dir,
        len(train),
        args.train_split,
        f" (kinds {args.pair_kinds})" if args.pair_kinds else "",
    )
    trainer = RewardTrainer(
        model=str(sft_dir),
        args=args,
        train_dataset=train,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config_for_reward(model_args),
    )
    check_kept_pairs(len(train), len(trainer.train_dataset), args.max_length)
    trainer.train(
        resume_from_checkpoint=resolve_resume(
            args.resume_from_checkpoint,
            args.output_dir,
            overwrite_output_dir=args.overwrite_output_dir,
        )
    )

    output_dir = Path(args.output_dir)
    if trainer.args.should_save:
        trainer.save_state()
    save_model_dir(
        trainer,
        output_dir,
        info=reward_model_info(sft_dir, args, len(train)),
        dataset=SFTModelFiles(sft_dir),
        run_config=run_config(args, model_args),
        peft_save="merged",
    )
    result: dict[str, Any] = {}
    if args.final_eval and trainer.accelerator.is_main_process:
        result = _final_evaluation(args, output_dir, has_split=args.eval_split in pairs)
    trainer.accelerator.wait_for_everyone()
    return result


def _load_pairs(args: CellRewardConfig):
    """``(pairs, train, eval_dataset)``: every split of the preference pairs, the training pairs
    and the pairs evaluated during training (``None`` with ``eval_strategy: no``)."""
    from cellrlhf.reward.preference_files import load_preference_pairs

    if not args.preferences_dir:
        raise ValueError(
            "no preference data given: pass --preferences_dir <directory written by `cellrlhf "
            "preferences`> (or set preferences_dir in the --config YAML)."
        )
    pairs = load_preference_pairs(args.preferences_dir)
    if args.train_split not in pairs:
        raise ValueError(
            f"{args.preferences_dir} has no {args.train_split!r} split of pairs (has {list(pairs)})."
        )
    train = training_pairs(
        pairs[args.train_split],
        pair_kinds=args.pair_kinds,
        max_pairs=args.max_train_pairs,
        margin_scale=args.score_margin_scale,
        seed=args.seed,
    )
    if args.eval_strategy == "no":
        return pairs, train, None
    if args.eval_split not in pairs:
        raise ValueError(
            f"eval_strategy={args.eval_strategy} needs pairs split {args.eval_split!r}."
        )
    if args.load_best_model_at_end:
        logger.warning(
            "load_best_model_at_end selects the model on the held-out split %r: its figures are then "
            "no longer unbiased estimates for unseen perturbations.",
            args.eval_split,
        )
    return (
        pairs,
        train,
        training_pairs(pairs[args.eval_split], margin_scale=args.score_margin_scale),
    )


def _load_tokenizer(sft_dir: Path):
    """The SFT model's tokenizer, padding with the end token where it has no pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _final_evaluation(args: CellRewardConfig, output_dir: Path, *, has_split: bool) -> dict:
    """Evaluate the saved reward model on the held-out split (``{}`` when there is none)."""
    if not has_split:
        logger.warning(
            "no %r split in %s: final evaluation skipped.", args.eval_split, args.preferences_dir
        )
        return {}
    from cellrlhf.reward.reward_model_eval import evaluate_saved

    result = evaluate_saved(
        output_dir,
        args.preferences_dir,
        split=args.eval_split,
        batch_size=args.per_device_eval_batch_size,
        max_pairs=args.final_eval_max_pairs,
        max_completions=args.final_eval_max_completions,
    )
    logger.info(
        "held-out (%s) pairwise accuracy %.3f, Spearman %.3f pooled / %.3f within prompt",
        args.eval_split,
        result.get("pairwise_accuracy", float("nan")),
        result.get("spearman", float("nan")),
        result.get("spearman_within_prompt", float("nan")),
    )
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    """``cellrlhf reward`` / ``reward.py``: parse ``--config`` YAML plus flags, then train.

    Mistakes in the input (missing model or preference directory, bad flag values) print one
    line and return 2 instead of a traceback.
    """
    import sys

    from cellrlhf.sft.model_dir import ModelDirError

    parser = make_parser(prog="cellrlhf reward")
    try:
        args, model_args = parser.parse_args_and_config(args=None if argv is None else list(argv))
        main(args, model_args)
    except (ValueError, FileNotFoundError, ModelDirError) as err:
        print(f"cellrlhf reward: error: {err}", file=sys.stderr)
        return 2
    return 0
