"""The reward functions of a GRPO / RLOO run, from the ``rewards`` list of its config.

- ``fidelity``: the programmatic group fidelity reward of the reward stage
  (:class:`cellrlhf.reward.fidelity_reward.GroupFidelityReward`): each prompt's completions form
  a pseudo-bulk compared with the real data; leave-one-out credit; duplicate and missing-end
  penalties. A completion is finished when it holds the tokenizer's end token.
- ``model``: the learned reward model (one-label sequence classification, same vocabulary as
  the policy), scored by TRL on the chat-formatted prompt + answer.

With both, TRL sums them with ``reward_weights`` (a weighted mix).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["build_reward_functions"]


def build_reward_functions(
    sources: Sequence[str],
    *,
    decoder,
    tokenizer,
    reward_model_path: str | None,
    fidelity_kwargs: dict | None = None,
    dtype: str | None = None,
    specific_weight: float = 0.0,
    train_rows=None,
) -> tuple[list, list]:
    """Reward functions and their processing classes, in the order of ``sources``.

    ``specific_weight`` weighs the fidelity reward's perturbation-specific term; its reference
    (each context's mean training change) comes from ``train_rows`` (the ``rl/train`` split).

    Returns
    -------
    funcs
        For TRL's ``reward_funcs``.
    processing_classes
        For TRL's ``reward_processing_classes`` (``None`` for programmatic rewards).
    """
    from cellrlhf.ppo.model_loading import load_scoring_model
    from cellrlhf.reward.fidelity_reward import GroupFidelityReward
    from cellrlhf.reward.specific_reference import with_specific_term

    funcs, processing = [], []
    for source in sources:
        if source == "fidelity":
            kwargs = with_specific_term(fidelity_kwargs, specific_weight, train_rows)
            kwargs.setdefault("end_token_ids", [tokenizer.eos_token_id])
            funcs.append(GroupFidelityReward(decoder, **kwargs))
            processing.append(None)
        elif source == "model":
            if not reward_model_path:
                raise ValueError("the `model` reward needs --reward_model_path.")
            model = load_scoring_model(
                reward_model_path, tokenizer=tokenizer, dtype=dtype, what="reward model"
            )
            funcs.append(model)
            processing.append(tokenizer)
        else:
            raise ValueError(f"unknown reward {source!r}; choose `fidelity` or `model`.")
    return funcs, processing
