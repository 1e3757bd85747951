"""Load what a saved model directory carries, with safe defaults.

Weights are read from safetensors only (``use_safetensors=True``; a directory with pickle weights
only is refused before transformers sees it) and ``trust_remote_code`` stays ``False`` unless the
caller sets it. Device placement is transformers' / accelerate's (``device_map``), never chosen
here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellrlhf.cell2text.vocab import GeneVocab
from cellrlhf.hub.model_files import check_safe_weights

__all__ = ["LoadedModel", "load_model_dir", "read_model_info"]

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """Everything read from a model directory."""

    model: Any
    tokenizer: Any
    vocab: GeneVocab
    decoder: Any
    info: dict = field(default_factory=dict)
    data_manifest: dict = field(default_factory=dict)
    path: Path | None = None


def read_model_info(model_dir: Path) -> dict:
    """``cellrlhf.json`` of the directory (``{}`` with a warning for plain transformers models)."""
    file = model_dir / "cellrlhf.json"
    if not file.is_file():
        logger.warning(
            "%s has no cellrlhf.json: not written by a cellrlhf stage (or its save was "
            "interrupted); task prompts assume the defaults.",
            model_dir,
        )
        return {}
    return json.loads(file.read_text())


def _check_generative(model_dir: Path, info: dict) -> None:
    """Refuse a reward model (a sequence classifier): it scores answers, it cannot write them."""
    config_file = model_dir / "config.json"
    architectures = []
    if config_file.is_file():
        architectures = json.loads(config_file.read_text()).get("architectures") or []
    if info.get("stage") == "reward" or any("SequenceClassification" in a for a in architectures):
        policy = info.get("sft_model") or info.get("base_model")
        hint = f" (its policy was trained from {policy})" if policy else ""
        raise ValueError(
            f"{model_dir} is a reward model ({', '.join(architectures) or 'stage reward'}): it "
            f"scores answers but cannot write them. Chat with the SFT or PPO model instead{hint}."
        )


def _load_tokenizer(model_dir: Path, trust_remote_code: bool):
    try:
        from cellrlhf.cell2text.tokenizer import load_cell_tokenizer
    except ImportError:  # pragma: no cover - the cell2text tokenizer module ships with cellrlhf
        load_cell_tokenizer = None
    if load_cell_tokenizer is not None:
        return load_cell_tokenizer(model_dir)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)


def _load_weights(model_dir: Path, tokenizer, *, device_map, dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if dtype is not None:
        kwargs["dtype"] = dtype
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftConfig, PeftModel

        base_path = PeftConfig.from_pretrained(str(model_dir)).base_model_name_or_path
        if not base_path:
            raise ValueError(f"{model_dir}/adapter_config.json names no base model.")
        base = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
        if base.get_input_embeddings().weight.shape[0] != len(tokenizer):
            base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model = PeftModel.from_pretrained(base, str(model_dir))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    model.eval()
    return model


def load_model_dir(
    model_dir: str | Path,
    *,
    device_map=None,
    dtype=None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load weights, tokenizer (with chat template), gene vocabulary, decoder and metadata.

    Parameters
    ----------
    model_dir
        A local model directory (see :func:`cellrlhf.hub.model_files.resolve_model_dir`).
    device_map
        Passed to ``from_pretrained`` (``"auto"`` spreads the model over the available GPUs and
        CPU with accelerate; ``None`` loads on CPU).
    dtype
        Weight dtype (``"auto"``, ``torch.bfloat16``...); ``None`` keeps transformers' default.
    trust_remote_code
        Allow code shipped with the model to run. Off unless you trust the model's author.
    """
    from cellrlhf.cell2text.decoder import ExpressionDecoder

    model_dir = Path(model_dir)
    check_safe_weights(model_dir)
    info = read_model_info(model_dir)
    _check_generative(model_dir, info)
    for name in ("gene_vocab.json", "expression_decoder.json"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(
                f"{model_dir} has no {name}: a cellrlhf model directory carries the gene "
                "vocabulary and expression decoder of its training data (copied by `cellrlhf "
                "sft`). Copy them from the dataset directory the model was trained on."
            )
    tokenizer = _load_tokenizer(model_dir, trust_remote_code)
    model = _load_weights(
        model_dir,
        tokenizer,
        device_map=device_map,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
    )
    manifest_file = model_dir / "data_manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        vocab=GeneVocab.load(model_dir),
        decoder=ExpressionDecoder.load(model_dir),
        info=info,
        data_manifest=manifest if isinstance(manifest, dict) else {},
        path=model_dir,
    )
