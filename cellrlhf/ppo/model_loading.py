"""Load the models of an RL run from saved model directories (safetensors only, no remote code).

- the **policy** and the frozen **reference**: the SFT model directory with full weights (an
  SFT run with LoRA saves them merged by default, ``--peft_save merged``); RL itself trains all
  weights or new LoRA adapters (``--use_peft``);
- the **reward model** and the initial **value model**: a reward model directory (one-label
  sequence classification on the SFT backbone, ``cellrlhf reward``).

PPO feeds the policy's token ids straight into the reward and value models, and GRPO scores
the policy's text with the reward model's tokenizer, so their vocabularies must be the
policy's: :func:`check_same_tokenizer` refuses anything else. Every refusal is a
:class:`~cellrlhf.sft.model_dir.ModelDirError`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cellrlhf.sft.model_dir import ModelDirError, load_cell_model

__all__ = [
    "check_model_dir",
    "load_policy",
    "load_scoring_model",
    "check_same_tokenizer",
]

logger = logging.getLogger(__name__)


def check_model_dir(path: str | Path | None, *, what: str, flag: str) -> Path:
    """An existing saved model directory with weights, or a clear error naming ``flag``."""
    if not path:
        raise ModelDirError(f"no {what} given: pass {flag} <directory> (or set it in the YAML).")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelDirError(f"{what} directory {root} does not exist.")
    if (root / "adapter_config.json").exists() and not any(root.glob("model*.safetensors")):
        raise ModelDirError(
            f"{root} holds LoRA adapters only; RL needs the full {what} weights. Re-save it merged "
            "(`cellrlhf sft ... --peft_save merged`, the default)."
        )
    if not (root / "config.json").exists():
        raise ModelDirError(f"{root} has no config.json: it is not a saved {what} directory.")
    if not any(root.glob("*.safetensors")):
        raise ModelDirError(
            f"{root} has no .safetensors weights (only safetensors are loaded, never pickles)."
        )
    return root


def load_policy(path: str | Path, *, dtype: str | None = None):
    """The SFT policy, its tokenizer and ``cellrlhf.json``: ``(model, tokenizer, info)``."""
    root = check_model_dir(path, what="SFT policy", flag="--model_name_or_path")
    model, tokenizer, info = load_cell_model(root, dtype=_dtype(dtype))
    stage = info.get("stage")
    if stage not in {"sft", "pretrain", "ppo", "grpo", "rloo"}:
        logger.warning("%s was written by stage %r; RL expects an SFT model.", root, stage)
    return model, tokenizer, info


def load_scoring_model(path: str | Path, *, tokenizer, dtype: str | None = None, what: str):
    """A one-label sequence-classification model (reward or value) sharing the policy's vocabulary.

    Its ``config.pad_token_id`` is set to the tokenizer's, where the score is read.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = check_model_dir(path, what=what, flag="--reward_model_path")
    own_tokenizer = AutoTokenizer.from_pretrained(str(root))
    check_same_tokenizer(tokenizer, own_tokenizer, where=str(root))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(root), num_labels=1, use_safetensors=True, dtype=_dtype(dtype)
    )
    if model.config.num_labels != 1:
        raise ModelDirError(
            f"{root} has num_labels={model.config.num_labels}; a {what} outputs one score."
        )
    embeddings = model.get_input_embeddings().num_embeddings  # weights may be ZeRO-3 partitions
    if embeddings < len(tokenizer):
        raise ModelDirError(
            f"{root} embeds {embeddings} tokens but the policy's tokenizer has {len(tokenizer)}."
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def check_same_tokenizer(policy_tokenizer, other_tokenizer, *, where: str) -> None:
    """Refuse a reward / value model whose tokens differ from the policy's."""
    a, b = policy_tokenizer.get_vocab(), other_tokenizer.get_vocab()
    if a != b:
        only_policy = sorted(set(a) - set(b))[:5]
        only_other = sorted(set(b) - set(a))[:5]
        moved = sum(1 for t in set(a) & set(b) if a[t] != b[t])
        raise ModelDirError(
            f"the tokenizer of {where} differs from the policy's (tokens only in the policy: "
            f"{only_policy}, only there: {only_other}, {moved} shared tokens with other ids). "
            "The reward model must be trained from the same SFT model (`cellrlhf reward "
            "--model_name_or_path <the SFT directory>`)."
        )
    for name in ("pad_token_id", "eos_token_id"):
        if getattr(policy_tokenizer, name) != getattr(other_tokenizer, name):
            raise ModelDirError(
                f"{where} has {name}={getattr(other_tokenizer, name)}, the policy "
                f"{getattr(policy_tokenizer, name)}; they must agree."
            )


def _dtype(dtype: str | None):
    if dtype in (None, "auto"):
        return None if dtype is None else "auto"
    import torch

    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ModelDirError(f"dtype={dtype!r} is not a torch dtype (float32, bfloat16, ...).")
    return value
