"""The preference directory: what ``cellrlhf preferences`` writes and the reward stage reads.

::

    pairs/         DatasetDict train/test, TRL preference format (conversational, explicit
                   prompt): prompt, chosen, rejected, plus score_chosen, score_rejected,
                   pair_kind, perturbation, cell_context, split_kind, prompt_id, rejected_source,
                   rejected_source_context (the cell context of the rejected answer's cells)
    completions/   DatasetDict train/test: every sampled completion with its score and terms
                   (the reward model's rank-correlation evaluation uses test)
    manifest.json  configuration, inputs, counts, held-out perturbations, leakage check
    preferences.png  score distributions and pair counts
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cellrlhf.reward.preference_pairs import PAIR_KINDS

__all__ = [
    "COMPLETIONS_DIRNAME",
    "MANIFEST_FILENAME",
    "PAIRS_DIRNAME",
    "load_preference_pairs",
    "load_preferences",
    "preferences_manifest",
    "read_preferences_manifest",
    "write_preferences",
]

logger = logging.getLogger(__name__)

PAIRS_DIRNAME = "pairs"
COMPLETIONS_DIRNAME = "completions"
MANIFEST_FILENAME = "manifest.json"
PLOT_FILENAME = "preferences.png"
_FORMAT = "cellrlhf.preferences"
_VERSION = 1


def write_preferences(
    out_dir: str | Path,
    pair_splits: dict[str, list[dict]],
    completion_splits: dict[str, list[dict]],
    manifest: dict,
    *,
    check=None,
) -> Path:
    """Write pairs, completions, plot and manifest into ``out_dir``; returns it.

    ``check`` (optional) is called with the pairs ``DatasetDict`` before anything is written
    (the leakage check).
    """
    from datasets import Dataset, DatasetDict

    pairs = DatasetDict(
        {s: Dataset.from_list(v) if v else _empty_pairs() for s, v in pair_splits.items()}
    )
    if check is not None:
        check(pairs)
    completions = DatasetDict({s: Dataset.from_list(v) for s, v in completion_splits.items() if v})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs.save_to_disk(str(out / PAIRS_DIRNAME))
    completions.save_to_disk(str(out / COMPLETIONS_DIRNAME))
    _plot(completion_splits, pair_splits, out / PLOT_FILENAME)
    (out / MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=1))
    logger.info("preference data written to %s: %s", out, manifest["counts"])
    return out


def _empty_pairs():
    from datasets import Dataset, Features, Value

    message = [{"role": Value("string"), "content": Value("string")}]
    features = Features(
        {
            "prompt": message,
            "chosen": message,
            "rejected": message,
            "score_chosen": Value("float64"),
            "score_rejected": Value("float64"),
            "pair_kind": Value("string"),
            "rejected_source": Value("string"),
            "rejected_source_context": Value("string"),
            "perturbation": Value("string"),
            "cell_context": Value("string"),
            "split_kind": Value("string"),
            "prompt_id": Value("string"),
        }
    )
    return Dataset.from_dict({k: [] for k in features}, features=features)


def preferences_manifest(
    config, built, pairs: dict, completions: dict, held: set, seconds: float
) -> dict:
    """``manifest.json`` of a preference directory built from ``built`` (a
    :class:`~cellrlhf.data.layout.DatasetDir`)."""
    data_manifest = built.manifest
    counts = {
        split: {kind: sum(1 for p in rows if p["pair_kind"] == kind) for kind in PAIR_KINDS}
        for split, rows in pairs.items()
    }
    scores = {
        split: {
            "n_completions": len(rows),
            "score_mean": float(np.mean([c["score"] for c in rows])) if rows else None,
            "score_std": float(np.std([c["score"] for c in rows])) if rows else None,
            "ended_fraction": float(np.mean([c["ended"] for c in rows])) if rows else None,
            "group_fidelity_mean": float(np.mean([c["group_fidelity"] for c in rows]))
            if rows
            else None,
        }
        for split, rows in completions.items()
    }
    return {
        "format": _FORMAT,
        "version": _VERSION,
        "config": asdict(config),
        "model": str(config.model_name_or_path),
        "dataset_dir": str(built.path),
        "dataset_fingerprint": data_manifest.get("fingerprint"),
        "simulated": bool(data_manifest.get("simulated", False)),
        "counts": counts,
        "completions": scores,
        "perturbations": {
            split: sorted({p["perturbation"] for p in rows}) for split, rows in pairs.items()
        },
        "held_out": sorted(f"{p} | {c}" for p, c in held),
        "leakage_check": "passed: no held-out perturbation in the training pairs",
        "seconds": round(seconds, 1),
    }


def _plot(completions: dict[str, list[dict]], pairs: dict[str, list[dict]], path: Path) -> None:
    from cellrlhf.figures import subplots

    fig, axes = subplots(1, 2, figsize=(10, 3.8))
    for split, rows in completions.items():
        if rows:
            axes[0].hist([c["score"] for c in rows], bins=40, alpha=0.6, label=split)
    axes[0].set_xlabel("group-aware score of sampled completions")
    axes[0].set_ylabel("completions")
    axes[0].legend()
    width = 0.8 / max(len(pairs), 1)
    for k, (split, rows) in enumerate(pairs.items()):
        heights = [sum(1 for p in rows if p["pair_kind"] == kind) for kind in PAIR_KINDS]
        axes[1].bar(np.arange(len(PAIR_KINDS)) + k * width, heights, width=width, label=split)
    axes[1].set_xticks(np.arange(len(PAIR_KINDS)) + 0.4 - width / 2, PAIR_KINDS, rotation=15)
    axes[1].set_ylabel("pairs")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- loading
def _check_preferences_dir(path: str | Path) -> Path:
    root = Path(path)
    if not (root / MANIFEST_FILENAME).exists() or not (root / PAIRS_DIRNAME).exists():
        raise FileNotFoundError(
            f"{root} is not a preference directory (no {MANIFEST_FILENAME} / {PAIRS_DIRNAME}/); build one with "
            "`cellrlhf preferences --config ...`."
        )
    return root


def read_preferences_manifest(path: str | Path) -> dict:
    """The ``manifest.json`` of a preference directory, checked to be one.

    Raises
    ------
    FileNotFoundError
        ``path`` has no ``manifest.json`` or ``pairs/`` (the fix is named in the message).
    ValueError
        The manifest is not a JSON object.
    """
    manifest_path = _check_preferences_dir(path) / MANIFEST_FILENAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{manifest_path} is not valid JSON ({err}); rebuild the directory with "
            "`cellrlhf preferences --config ...`."
        ) from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{manifest_path} holds {type(manifest).__name__}, not a JSON object.")
    return manifest


def load_preference_pairs(path: str | Path):
    """The ``pairs`` DatasetDict of a preference directory (TRL preference format)."""
    from datasets import load_from_disk

    return load_from_disk(str(_check_preferences_dir(path) / PAIRS_DIRNAME))


def load_preferences(path: str | Path, split: str):
    """``(pairs, completions)`` of one split; ``completions`` is ``None`` when absent."""
    from datasets import load_from_disk

    root = _check_preferences_dir(path)
    pairs = load_from_disk(str(root / PAIRS_DIRNAME))
    if split not in pairs:
        raise ValueError(f"{root} has no {split!r} split of pairs (splits: {list(pairs)}).")
    completions = None
    if (root / COMPLETIONS_DIRNAME).exists():
        all_completions = load_from_disk(str(root / COMPLETIONS_DIRNAME))
        completions = all_completions.get(split)
    return pairs[split], completions
