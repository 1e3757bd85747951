"""Which files make a saved cellrlhf model, which are refused, and where a Hub id's files live.

A saved model directory (written by ``sft``, ``reward`` or ``ppo``) holds the transformers
checkpoint (``config.json``, safetensors weights, tokenizer files and chat template) next to the
cell2text files (``gene_vocab.json``, ``expression_decoder.json``) and the run's metadata
(``cellrlhf.json``, ``training_config.yaml``, ``data_manifest.json``, evaluation results). The
same list decides what is uploaded to the Hub and what is downloaded from it, so a pushed model
loads exactly like the local one.

Pickle files (``pytorch_model.bin``, ``*.pt``, ``*.pkl``) can run code when loaded: they are
never uploaded, never downloaded, and a directory whose only weights are pickles is refused.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "MODEL_FILE_PATTERNS",
    "PICKLE_PATTERNS",
    "UnsafeModelError",
    "list_model_files",
    "check_safe_weights",
    "looks_like_hub_id",
    "resolve_model_dir",
]

logger = logging.getLogger(__name__)

# Top-level files of a model repository, as glob patterns (``fnmatch``).
MODEL_FILE_PATTERNS: tuple[str, ...] = (
    # transformers checkpoint
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    # PEFT adapter saves
    "adapter_config.json",
    "adapter_model.safetensors",
    # tokenizer and chat template
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    # cell2text
    "gene_vocab.json",
    "expression_decoder.json",
    # measured evidence of the prompts (cellrlhf.data.layout.EVIDENCE_INDEX_FILENAME)
    "evidence_index.json",
    # run metadata and results
    "cellrlhf.json",
    "training_config.yaml",
    "data_manifest.json",
    "eval_results.json",
    "*.png",
    "README.md",
)

PICKLE_PATTERNS: tuple[str, ...] = (
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.pickle",
    "*.ckpt",
    "*.joblib",
)

_WEIGHT_PATTERNS = ("model.safetensors", "model-*-of-*.safetensors", "adapter_model.safetensors")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class UnsafeModelError(ValueError):
    """A model directory that can only be loaded by unpickling (arbitrary code execution)."""


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def check_safe_weights(model_dir: str | Path) -> list[Path]:
    """The safetensors weight files of ``model_dir``; raise when only pickle weights are there.

    Raises
    ------
    FileNotFoundError
        The directory does not exist or holds no weights at all.
    UnsafeModelError
        The only weights are pickle files (``pytorch_model.bin``, ``*.pt``, ...).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist.")
    names = sorted(p.name for p in model_dir.iterdir() if p.is_file())
    weights = [model_dir / n for n in names if _matches(n, _WEIGHT_PATTERNS)]
    if weights:
        return weights
    pickles = [n for n in names if _matches(n, PICKLE_PATTERNS) and n != "training_args.bin"]
    if pickles:
        raise UnsafeModelError(
            f"{model_dir} holds weights only as pickle files ({', '.join(pickles)}). Loading a "
            "pickle can run arbitrary code, so cellrlhf loads safetensors only. If you trust the "
            "file, convert it once in a trusted environment: load it with transformers and call "
            "model.save_pretrained(dir, safe_serialization=True)."
        )
    raise FileNotFoundError(
        f"{model_dir} holds no model weights (expected model.safetensors, sharded "
        "model-*-of-*.safetensors, or adapter_model.safetensors). Is this the output directory "
        "of `cellrlhf sft` / `reward` / `ppo`?"
    )


def list_model_files(model_dir: str | Path) -> list[Path]:
    """The files of ``model_dir`` that belong to the model (sorted); pickles and run junk excluded.

    Checkpoint folders (``checkpoint-*``), optimizer states, logs and ``training_args.bin`` are
    left out: only top-level files matching :data:`MODEL_FILE_PATTERNS` are listed.
    """
    model_dir = Path(model_dir)
    check_safe_weights(model_dir)
    files, skipped = [], []
    for path in sorted(model_dir.iterdir()):
        if not path.is_file():
            continue
        if _matches(path.name, MODEL_FILE_PATTERNS) and not _matches(path.name, PICKLE_PATTERNS):
            files.append(path)
        else:
            skipped.append(path.name)
    if skipped:
        logger.info("not part of the model, left out: %s", ", ".join(skipped))
    return files


def looks_like_hub_id(value: str) -> bool:
    """``"org/name"`` shaped (a Hub repository id rather than a local path)."""
    return bool(_HUB_ID_RE.match(value)) and ".." not in value


def resolve_model_dir(
    path_or_hub_id: str | Path,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local directory holding the model: the path itself, or the Hub snapshot in the cache.

    Hub ids are downloaded with :func:`huggingface_hub.snapshot_download` into the standard cache
    (``HF_HOME`` / ``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` uses the cache only), fetching only the
    files of :data:`MODEL_FILE_PATTERNS`: pickle files are never downloaded.
    """
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    value = str(path_or_hub_id)
    if not looks_like_hub_id(value):
        raise FileNotFoundError(
            f"{value!r} is neither a model directory nor a Hugging Face Hub id ('org/name')."
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = snapshot_download(
            value,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_patterns=list(MODEL_FILE_PATTERNS),
            ignore_patterns=list(PICKLE_PATTERNS),
            library_name="cellrlhf",
        )
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"{value!r} is not a local directory and is not in the Hugging Face cache, and the "
            "Hub cannot be reached (offline, or HF_HUB_OFFLINE=1). Download it where there is a "
            f"connection (`hf download {value}`) or pass a local model directory."
        ) from err
    return Path(snapshot)
