"""Conversational prompts as the token ids TRL's ``PPOTrainer`` generates from.

``PPOTrainer`` takes a dataset of ``input_ids`` only and pads batches itself with the tokenizer
(``DataCollatorWithPadding``), on the side the tokenizer says; generation continues the last
position, so the tokenizer must pad on the left. It finds padding by comparing ids with
``pad_token_id``, so a prompt must never contain the pad token, and pad must differ from the
stop token (else every answer would look empty).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

__all__ = [
    "PromptTokenizationError",
    "check_rl_tokenizer",
    "stop_token_ids",
    "prompt_token_ids",
    "tokenize_prompts",
]

logger = logging.getLogger(__name__)


class PromptTokenizationError(ValueError):
    """A prompt or a tokenizer cannot be used for RL generation."""


def check_rl_tokenizer(tokenizer, *, require_distinct_pad: bool = True) -> None:
    """Set left padding and check the special tokens RL generation relies on.

    Parameters
    ----------
    tokenizer
        The policy's tokenizer.
    require_distinct_pad
        PPO reads padding by id, so its pad token must differ from the end token; GRPO and
        RLOO track lengths with masks and accept a shared id.

    Raises
    ------
    PromptTokenizationError
        Without a chat template, an end token or a pad token, or (``require_distinct_pad``)
        with a pad token equal to the end token.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise PromptTokenizationError(
            "the tokenizer has no chat template: RL prompts are conversations. Use the tokenizer "
            "saved with the SFT model (`cellrlhf sft` writes the project chat template)."
        )
    if tokenizer.eos_token_id is None:
        raise PromptTokenizationError(
            "the tokenizer has no eos token; generation could never stop."
        )
    if tokenizer.pad_token_id is None:
        raise PromptTokenizationError("the tokenizer has no pad token; set tokenizer.pad_token.")
    if require_distinct_pad and tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise PromptTokenizationError(
            f"pad token {tokenizer.pad_token!r} must differ from the eos token "
            f"{tokenizer.eos_token!r}: PPO reads padding by id, so a shared id would mark every "
            "end of answer as padding. Save the SFT tokenizer with its own pad token."
        )
    tokenizer.padding_side = "left"


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Token ids that end an answer: the generation config's, else the tokenizer's eos."""
    ids = getattr(generation_config, "eos_token_id", None) if generation_config else None
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if not ids:
        raise PromptTokenizationError("no end token: set eos_token in the tokenizer.")
    return [int(i) for i in ids]


def prompt_token_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Token ids of one conversational prompt, ending with the assistant's generation prompt.

    Raises
    ------
    PromptTokenizationError
        When the prompt is not a list of messages, already ends with an assistant turn, or
        tokenizes to a sequence holding the pad token.
    """
    messages = list(messages)
    if not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise PromptTokenizationError(
            "a prompt must be a list of {'role', 'content'} messages (the rl/ `prompt` column)."
        )
    if messages[-1]["role"] == "assistant":
        raise PromptTokenizationError(
            "the prompt ends with an assistant turn; RL prompts stop before the answer."
        )
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    ids = [int(i) for i in ids]
    if tokenizer.pad_token_id in ids:
        raise PromptTokenizationError(
            f"the prompt tokenizes to a sequence with the pad token {tokenizer.pad_token!r}; PPO "
            "would read it as padding. Check the prompt text for that token."
        )
    return ids


def tokenize_prompts(
    dataset,
    tokenizer,
    *,
    column: str = "prompt",
    max_prompt_length: int | None = None,
    keep_columns: Sequence[str] = (),
    num_proc: int | None = None,
):
    """Tokenize a dataset of conversational prompts for ``PPOTrainer``.

    Parameters
    ----------
    dataset
        A ``datasets.Dataset`` with a ``column`` of message lists.
    tokenizer
        The policy's tokenizer (its chat template); switched to left padding.
    column
        The prompt column.
    max_prompt_length
        Prompts with more tokens are dropped, with a warning (a truncated chat prompt would not
        end with the generation prompt). ``None``: keep all.
    keep_columns
        Other columns to keep (by default only ``input_ids`` remain, as the collator pads every
        column it gets).
    num_proc
        Processes for ``Dataset.map``.

    Returns
    -------
    datasets.Dataset
        With ``input_ids`` (unpadded lists) and ``keep_columns``.
    """
    check_rl_tokenizer(tokenizer)
    if column not in dataset.column_names:
        raise PromptTokenizationError(
            f"the dataset has no {column!r} column (columns: {dataset.column_names})."
        )
    missing = [c for c in keep_columns if c not in dataset.column_names]
    if missing:
        raise PromptTokenizationError(f"columns {missing} to keep are not in the dataset.")

    def encode(messages):
        return {"input_ids": prompt_token_ids(tokenizer, messages)}

    drop = [c for c in dataset.column_names if c not in set(keep_columns)]
    tokenized = dataset.map(
        encode,
        input_columns=column,
        remove_columns=drop,
        num_proc=num_proc,
        desc="tokenize prompts",
    )
    if max_prompt_length is not None:
        before = len(tokenized)
        tokenized = tokenized.filter(
            lambda ids: len(ids) <= max_prompt_length, input_columns="input_ids", num_proc=num_proc
        )
        dropped = before - len(tokenized)
        if dropped:
            logger.warning(
                "dropped %d of %d prompts longer than max_prompt_length=%d tokens",
                dropped,
                before,
                max_prompt_length,
            )
        if len(tokenized) == 0:
            raise PromptTokenizationError(
                f"every prompt is longer than max_prompt_length={max_prompt_length}; raise it."
            )
    return tokenized
