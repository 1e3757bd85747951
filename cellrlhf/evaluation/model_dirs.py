"""Model directories named on the command line: ``name=DIR``, checked before anything runs.

A missing or incomplete directory raises :class:`cellrlhf.sft.model_dir.ModelDirError`, the
error of the model directory contract.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from cellrlhf.sft.model_dir import ModelDirError

__all__ = [
    "GRAMMAR_SUFFIX",
    "LAST_SUFFIX",
    "is_grammar_row",
    "parse_model_args",
    "probe_model_info",
    "with_grammar_rows",
    "with_last_policies",
    "resolve_model_dirs",
    "sampling_identity",
]

logger = logging.getLogger(__name__)

# ``--model grpo=DIR`` also evaluates DIR/last as ``grpo_last``
LAST_SUFFIX = "_last"
# ``--model sft=DIR`` next to a constrained RL policy also samples DIR under the cell grammar,
# as ``sft_grammar``: RL minus it is RL's own effect, not the grammar's
GRAMMAR_SUFFIX = "_grammar"
_RL_STAGES = ("ppo", "grpo", "rloo")
# a model directory is complete when a stage has written these
_REQUIRED = ("config.json", "model.safetensors", "gene_vocab.json", "expression_decoder.json")
# the files of a model directory that decide the cells it samples for given prompts and settings
_SAMPLING_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "gene_vocab.json",
)


def parse_model_args(values: Iterable[str]) -> dict[str, str]:
    """``["sft=runs/x/sft", "ppo=runs/x/ppo"]`` -> ``{"sft": ..., "ppo": ...}``."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--model {value!r}: write NAME=DIR (e.g. --model ppo=runs/demo/ppo).")
        if name in out:
            raise ValueError(f"--model name {name!r} is given twice.")
        out[name] = path
    return out


def probe_model_info(path: Path) -> dict:
    """``cellrlhf.json`` of ``path`` as a dict; ``{}`` when missing or unreadable (a probe, no
    warning: :func:`cellrlhf.sft.model_dir.load_model_info` checks the directories loaded)."""
    from cellrlhf.sft.model_dir import MODEL_INFO_FILENAME

    try:
        info = json.loads((path / MODEL_INFO_FILENAME).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def sampling_identity(path: str | os.PathLike, name: str, constrain_cells: bool | None):
    """What decides the cells model ``name`` at ``path`` samples, given the prompts and the
    sampling settings: the checksums of its weights, config, tokenizer and gene files, its
    tokenizer mode and whether it is sampled under the cell grammar. Two directories with the
    same identity sample the same cells (an RL stage that kept its starting policy), so an
    evaluation samples them once. ``None`` without weights."""
    from cellrlhf.data.registry import file_sha256
    from cellrlhf.evaluation.prediction_sampling import constrained_mode

    path = Path(path)
    if not (path / "model.safetensors").is_file():
        return None
    info = probe_model_info(path)
    files = tuple((f, file_sha256(path / f)) for f in _SAMPLING_FILES if (path / f).is_file())
    constrained = constrained_mode(constrain_cells, info, name)[0]
    return files, info.get("tokenizer_mode"), constrained


def _selected_step(path: Path) -> object:
    return probe_model_info(path).get("selected_step")


def with_last_policies(models: Mapping[str, str | os.PathLike]) -> dict[str, str | os.PathLike]:
    """``models`` with each RL run's last policy after it, as ``<name>_last``.

    An RL stage keeps the policy that did best on the validation perturbations in its output
    directory and writes the last policy to ``<output_dir>/last`` when that is a different one
    (:func:`cellrlhf.ppo.policy_output.save_policy_dir`). Evaluating both shows what training did
    and what selection kept. A ``last`` directory is added when it is a complete model directory
    whose ``selected_step`` differs from the kept one's; where the run kept its last policy (no
    ``last/``, or a stale copy of the kept one) ``<name>_last`` is the kept directory itself, so
    every RL run has both rows (:func:`~cellrlhf.evaluation.evaluate.evaluate_models` samples a
    directory named twice once). Nothing is added where ``<name>_last`` is named already.

    Parameters
    ----------
    models
        Name -> model directory, in the order given.

    Returns
    -------
    Name -> directory, each ``<name>_last`` right after ``<name>``.
    """
    from cellrlhf.ppo.policy_output import LAST_DIRNAME

    out: dict[str, str | os.PathLike] = {}
    for name, path in models.items():
        out[name] = path
        last, last_name = Path(path) / LAST_DIRNAME, name + LAST_SUFFIX
        if last_name in models:
            continue
        if not last.is_dir():
            if _kept_its_last_policy(Path(path)):
                out[last_name] = path
                logger.info("model %r kept its last policy: %r is the same model.", name, last_name)
            continue
        problem = _problem(last)
        if problem is not None:
            logger.warning("model %r: its last policy %s %s; left out.", name, last, problem)
        elif _selected_step(last) == _selected_step(Path(path)):
            out[last_name] = path
            logger.info(
                "model %r: %s is the kept policy itself: %r is %r.", name, last, last_name, name
            )
        else:
            out[last_name] = last
            logger.info("model %r: its last policy %s is evaluated as %r.", name, last, last_name)
    return out


def is_grammar_row(name: str) -> bool:
    """Whether model ``name`` is a grammar row (sampled under the cell grammar whatever its
    ``cellrlhf.json`` says; :func:`with_grammar_rows`)."""
    return name.endswith(GRAMMAR_SUFFIX)


def with_grammar_rows(models: Mapping[str, str | os.PathLike]) -> dict[str, str | os.PathLike]:
    """``models`` with each model that RL did not train (SFT, a pretrained model) also sampled
    under the cell grammar, as ``<name>_grammar``, when one of them is a constrained policy.

    An RL policy trained with ``constrain_cells`` is sampled under the single-cell answer grammar
    (every answer one valid cell); an SFT model is sampled freely, and many of its answers
    repeat genes or run on. ``grpo - sft`` then mixes what RL learned with what the grammar
    does to the samples; ``grpo - sft_grammar`` compares like with like (both under the
    grammar) and ``sft_grammar - sft`` is the grammar's own effect. RL policies are sampled as
    they were trained (an unconstrained PPO policy is compared with SFT sampled freely). Nothing
    is added when no model is a constrained policy, for ``<name>_last`` rows, or where
    ``<name>_grammar`` is named already.

    Parameters
    ----------
    models
        Name -> model directory, in order (after :func:`with_last_policies`).

    Returns
    -------
    Name -> directory, each ``<name>_grammar`` right after ``<name>`` (the same directory).
    """
    info = {name: probe_model_info(Path(path)) for name, path in models.items()}
    constrained = {name for name, i in info.items() if i.get("constrain_cells")}
    if not constrained:
        return dict(models)
    out: dict[str, str | os.PathLike] = {}
    for name, path in models.items():
        out[name] = path
        grammar = name + GRAMMAR_SUFFIX
        if (
            name in constrained
            or info[name].get("stage") in _RL_STAGES
            or name.endswith(LAST_SUFFIX)
            or is_grammar_row(name)
            or grammar in models
        ):
            continue
        out[grammar] = path
        logger.info(
            "model %r is sampled freely and %s under the cell grammar: %r is %r sampled under "
            "the grammar too (like with like).",
            name,
            ", ".join(sorted(constrained)),
            grammar,
            name,
        )
    return out


def _kept_its_last_policy(path: Path) -> bool:
    """An RL policy directory without ``last/``: the run kept its last policy (the RL stage
    writes ``last/`` whenever it keeps another one)."""
    info = probe_model_info(path)
    return info.get("stage") in _RL_STAGES and info.get("selected_step") is not None


def _problem(path: Path) -> str | None:
    if not path.is_dir():
        return "does not exist"
    if not (path / "model.safetensors").is_file() and (path / "adapter_config.json").is_file():
        return None  # a PEFT adapter directory: the loader checks the rest
    missing = [name for name in _REQUIRED if not (path / name).is_file()]
    if missing and any((path / n).is_file() for n in ("model.safetensors.index.json",)):
        missing = [m for m in missing if m != "model.safetensors"]
    return f"lacks {missing}" if missing else None


def resolve_model_dirs(
    models: Mapping[str, str | os.PathLike], *, skip_missing: bool = False
) -> dict[str, Path]:
    """Check every model directory; missing ones raise, or are left out with a warning.

    Parameters
    ----------
    models
        Name -> model directory.
    skip_missing
        Leave out missing or incomplete directories (a pipeline stage that was skipped) with a
        warning instead of raising.

    Raises
    ------
    ModelDirError
        A directory is missing or incomplete (and ``skip_missing`` is off), or none is left.
    """
    found: dict[str, Path] = {}
    for name, path in models.items():
        path = Path(path)
        problem = _problem(path)
        if problem is None:
            found[name] = path
            continue
        message = (
            f"model {name!r}: {path} {problem}; it is not a saved model directory (did its "
            "training stage run and finish?)."
        )
        if not skip_missing:
            raise ModelDirError(message + " Pass --skip-missing to evaluate the others.")
        logger.warning("%s Left out (--skip-missing).", message)
    if models and not found:
        raise ModelDirError(
            f"no model to evaluate: none of {sorted(models)} is a saved model directory."
        )
    return found
