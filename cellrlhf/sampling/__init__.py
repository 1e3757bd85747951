"""The one sampler every stage writes answers with: :class:`Sampler` and its settings.

Low in the import graph (it needs only :mod:`cellrlhf.cell2text`, transformers and torch), so the
SFT, reward, RL, evaluation and chat stages all share it.
"""

from cellrlhf.sampling.sampler import (
    Completion,
    GenerationSettings,
    Sampler,
    answer_ids,
    answer_text,
    pad_rows,
)

__all__ = ["Completion", "GenerationSettings", "Sampler", "answer_ids", "answer_text", "pad_rows"]
