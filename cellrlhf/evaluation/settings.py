"""Settings of an evaluation run (``configs/eval/*.yaml``), with command-line overrides."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

__all__ = ["EvalSettings", "load_eval_settings"]


@dataclass(frozen=True)
class EvalSettings:
    """How models are sampled and scored.

    Attributes
    ----------
    cells_per_prompt
        Answers sampled per held-out prompt. A pseudo-bulk of short cells needs many: on Norman
        (~15 of 500 genes per cell) a perfect sampler of the average perturbed cell has a
        split-half reliability of 0.40 at 64 cells and 0.89 at 512, and reaches the mean
        baseline only from 128-512 cells (BENCHMARKS, SFT diagnosis). Each model's
        ``sampling_reliability`` says whether the number was enough.
    max_prompts
        Evaluate at most this many RL test prompts (seeded subsample; ``None``: all).
    seed
        Seed of the prompt subsample, the sampling and the split-half ceiling.
    temperature
        Sampling temperature (1.0: plain ancestral sampling, as the RL trainers sample).
    max_new_tokens
        Answer budget (``None``: the dataset's sentence length + markup, as the chat does).
    batch_size
        Answers per ``generate`` call.
    baselines
        Baselines learned from the training cells (:data:`cellrlhf.evaluation.baselines.BASELINES`).
    split_half_ceiling, representation_ceiling
        Add the split-half (real vs real) and the decoder's representation ceilings.
    de
        Run the DE tests for the DE-overlap metrics (the slow part of scoring).
    top_k
        Genes of ``pearson_delta_top{k}``.
    scatter_perturbations
        Perturbations per model in the predicted-vs-real change plot.
    device_map, dtype
        Placement and precision handed to transformers / accelerate (``device_map: auto`` on
        GPUs; ``null`` loads on CPU).
    constrain_cells
        Sample under the single-cell answer grammar: ``null`` as each model was trained (its
        ``cellrlhf.json``), ``true`` / ``false`` for every model.
    reference
        What a model's predicted change is taken against: ``model`` (its own answers to the
        control twin of each prompt, so that its shared biases cancel), ``real`` (the real
        control cells through encode -> decode; the default) or ``auto`` (``model`` when the
        dataset taught control answers; see :func:`~cellrlhf.evaluation.prediction.predict`).
    split
        Which prompts to answer: ``test`` (the figures to report), ``validation`` (the RL
        selection prompts: choose sampling settings such as ``temperature`` there, never on
        test) or ``train`` (a fit check on perturbations the models were trained on, with
        leave-one-out baselines; use ``max_prompts``: training prompts are many). A validation
        or train evaluation is its own setting in ``cellrlhf aggregate``, never pooled with
        test.
    """

    cells_per_prompt: int = 512
    max_prompts: int | None = None
    seed: int = 0
    temperature: float = 1.0
    max_new_tokens: int | None = None
    batch_size: int = 64
    baselines: tuple[str, ...] = (
        "control",
        "mean",
        "additive",
        "ridge",
        "nearest",
        "context_transfer",
    )
    split_half_ceiling: bool = True
    representation_ceiling: bool = True
    de: bool = True
    top_k: int = 20
    scatter_perturbations: int = 6
    device_map: str | None = None
    dtype: str | None = None
    constrain_cells: bool | None = None
    reference: str = "real"
    split: str = "test"

    def __post_init__(self) -> None:
        from cellrlhf.evaluation.prediction import PROMPT_SPLITS, REFERENCES

        if self.split not in PROMPT_SPLITS:
            raise ValueError(f"split={self.split!r}; choose one of {PROMPT_SPLITS}.")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference={self.reference!r}; choose one of {REFERENCES}.")
        if self.cells_per_prompt < 1:
            raise ValueError(f"cells_per_prompt={self.cells_per_prompt} must be >= 1.")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"max_prompts={self.max_prompts} must be >= 1 (or null for all).")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: sampling needs a temperature > 0.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1.")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1.")

    @classmethod
    def from_dict(cls, spec: dict | None, *, where: str = "eval settings") -> EvalSettings:
        spec = dict(spec or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}.")
        if "baselines" in spec:
            spec["baselines"] = tuple(spec["baselines"] or ())
        return cls(**spec)

    def with_overrides(self, **values) -> EvalSettings:
        """A copy with the given (non-``None``) values replaced."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def predict_kwargs(self) -> dict:
        """The keyword arguments of :func:`~cellrlhf.evaluation.prediction.predict` they set."""
        names = (
            "cells_per_prompt",
            "max_prompts",
            "seed",
            "temperature",
            "max_new_tokens",
            "batch_size",
            "device_map",
            "dtype",
            "constrain_cells",
            "reference",
            "split",
        )
        return {name: getattr(self, name) for name in names}

    def to_dict(self) -> dict:
        out = asdict(self)
        out["baselines"] = list(self.baselines)
        return out


def load_eval_settings(path: str | os.PathLike | None) -> EvalSettings:
    """Read ``configs/eval/<name>.yaml`` (``None``: the defaults)."""
    import yaml

    if path is None:
        return EvalSettings()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval config {path} does not exist (see configs/eval/).")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: an eval config is a mapping of settings.")
    return EvalSettings.from_dict(spec, where=str(path))
