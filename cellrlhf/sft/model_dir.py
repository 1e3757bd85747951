"""The saved model directory: everything a model needs to be queried later.

```
config.json, model.safetensors, generation_config.json   weights (or adapter_config.json +
                                                           adapter_model.safetensors)
tokenizer files + chat template
gene_vocab.json, expression_decoder.json                  copied from the dataset directory
evidence_index.json                                       copied when the dataset has one (its
                                                          prompts carried measured evidence)
data_manifest.json                                        the dataset's manifest.json
training_config.yaml                                      every argument of the run
cellrlhf.json                                             stage, tokenizer mode, base model, ...
```

The directory is assembled in a staging folder and its files are moved in afterwards;
``cellrlhf.json`` is moved last, so a directory with ``cellrlhf.json`` is complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cellrlhf.cell2text.vocab import VOCAB_FILENAME, GeneVocab
from cellrlhf.data.layout import EVIDENCE_INDEX_FILENAME, DatasetDir
from cellrlhf.run_environment import run_environment
from cellrlhf.sft.checkpoints import STAGING_DIRNAME

__all__ = [
    "MODEL_INFO_FILENAME",
    "TRAINING_CONFIG_FILENAME",
    "DATA_MANIFEST_FILENAME",
    "read_data_manifest",
    "ModelDirError",
    "is_cell_model_dir",
    "load_model_info",
    "save_model_dir",
    "write_model_files",
    "load_cell_model",
    "LoadedModel",
    "load_model_dir",
    "run_config_dict",
]

logger = logging.getLogger(__name__)

MODEL_INFO_FILENAME = "cellrlhf.json"
TRAINING_CONFIG_FILENAME = "training_config.yaml"
DATA_MANIFEST_FILENAME = "data_manifest.json"
_FORMAT = "cellrlhf.model"
_VERSION = 1


class ModelDirError(ValueError):
    """A directory is not a (complete) cellrlhf model directory."""


def is_cell_model_dir(path: str | Path) -> bool:
    """Whether ``path`` is a complete model directory written by a cellrlhf stage."""
    return (Path(path) / MODEL_INFO_FILENAME).is_file()


def load_model_info(path: str | Path, *, required: bool = True) -> dict:
    """Read ``cellrlhf.json`` of a model directory.

    Without the file: :class:`ModelDirError` when ``required``, else ``{}`` with a warning (a
    plain transformers model, whose task prompts assume the defaults).
    """
    file = Path(path) / MODEL_INFO_FILENAME
    if not file.is_file():
        if not required:
            logger.warning(
                "%s has no %s: not written by a cellrlhf stage (or its save was interrupted); "
                "task prompts assume the defaults.",
                path,
                MODEL_INFO_FILENAME,
            )
            return {}
        raise ModelDirError(
            f"{path} has no {MODEL_INFO_FILENAME}: it is not a complete cellrlhf model directory (was its "
            "save interrupted?). Point to the output directory of `cellrlhf pretrain` / `cellrlhf sft`."
        )
    info = json.loads(file.read_text())
    if info.get("format") != _FORMAT:
        raise ModelDirError(
            f"{file} is not a cellrlhf model description (format={info.get('format')!r})."
        )
    return info


def read_data_manifest(path: str | Path) -> dict:
    """The copy of the training data's ``manifest.json`` in a model directory
    (``data_manifest.json``); ``{}`` when it is missing, unreadable or not a JSON object (a model
    saved outside ``cellrlhf``, or by a version that did not copy it)."""
    try:
        payload = json.loads((Path(path) / DATA_MANIFEST_FILENAME).read_text())
    except (OSError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


def run_config_dict(stage: str, script_args, training_args, model_args) -> dict:
    """All arguments of a run as plain data (for ``training_config.yaml``)."""
    payload = {
        "stage": stage,
        "script_arguments": dataclasses.asdict(script_args),
        "training_arguments": training_args.to_dict(),
        "model_arguments": dataclasses.asdict(model_args),
    }
    return json.loads(json.dumps(payload, default=str))


def write_model_files(
    target: Path, *, dataset: DatasetDir, run_config: dict, info: dict, card_name: str
) -> None:
    """Write the cellrlhf files of a model directory beside its weights and tokenizer.

    The data set's ``gene_vocab.json``, ``expression_decoder.json`` and manifest (as
    ``data_manifest.json``; a missing one is warned about), its ``evidence_index.json`` when it
    has one (a build with evidence: the model is queried with the same evidence blocks),
    ``training_config.yaml`` from
    ``run_config``, ``cellrlhf.json`` from ``info`` (``peft`` defaults to ``None``; the versions,
    threads and hardware it was trained with under ``environment``; the checksum of the weights
    it started from under ``start_weights_sha256``) and the
    project's model card (titled ``card_name``; not TRL's).
    """
    import yaml

    from cellrlhf.sft.model_card import write_stage_card

    for name, source in (
        (VOCAB_FILENAME, dataset.vocab_path),
        (dataset.decoder_path.name, dataset.decoder_path),
        (DATA_MANIFEST_FILENAME, dataset.manifest_path),
    ):
        if source.exists():
            shutil.copyfile(source, target / name)
        else:
            logger.warning("%s has no %s; the model directory will lack it.", dataset.path, name)
    evidence_index = dataset.evidence_index_path
    if evidence_index.is_file():
        shutil.copyfile(evidence_index, target / EVIDENCE_INDEX_FILENAME)
    (target / TRAINING_CONFIG_FILENAME).write_text(yaml.safe_dump(run_config, sort_keys=False))
    full_info = {
        "format": _FORMAT,
        "version": _VERSION,
        "peft": None,
        **info,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": run_environment(),
    }
    full_info.setdefault("start_weights_sha256", _start_weights_sha256(full_info))
    (target / MODEL_INFO_FILENAME).write_text(json.dumps(full_info, indent=1, default=str))
    write_stage_card(target, card_name)


def _start_weights_sha256(info: dict) -> str | None:
    """Checksum of the weights a run started from (its ``sft_model``, else its ``base_model``),
    when that is a local directory with one ``model.safetensors``; else ``None``."""
    from cellrlhf.data.registry import file_sha256

    start = info.get("sft_model") or info.get("base_model")
    weights = Path(str(start)) / "model.safetensors" if start else None
    return file_sha256(weights) if weights is not None and weights.is_file() else None


def save_model_dir(
    trainer,
    output_dir: str | Path,
    *,
    info: dict,
    dataset: DatasetDir,
    run_config: dict,
    peft_save: str = "merged",
) -> Path:
    """Save the trained model and everything needed to query it; call on every process.

    Parameters
    ----------
    trainer
        The finished trainer (its model and tokenizer are saved).
    output_dir
        The model directory (existing files of the same names are replaced).
    info
        Content of ``cellrlhf.json`` (``stage``, ``tokenizer_mode``, ``base_model``, ...).
    dataset
        The dataset directory the model was trained on (vocab, decoder, manifest are copied).
    run_config
        Arguments of the run (:func:`run_config_dict`), written as ``training_config.yaml``.
    peft_save
        For PEFT models: ``"merged"`` (full weights) or ``"adapter"``.
    """
    from peft import PeftModel

    output_dir = Path(output_dir)
    staged = output_dir / STAGING_DIRNAME / "final"
    accelerator = trainer.accelerator
    model = accelerator.unwrap_model(trainer.model)
    is_peft = isinstance(model, PeftModel)
    if trainer.args.should_save:
        shutil.rmtree(staged, ignore_errors=True)
    accelerator.wait_for_everyone()
    if is_peft and peft_save == "merged":
        if trainer.args.should_save:
            merged = model.merge_and_unload()
            merged.save_pretrained(staged, safe_serialization=True)
            trainer.processing_class.save_pretrained(staged)
    else:
        trainer.save_model(str(staged))
    accelerator.wait_for_everyone()
    if trainer.args.should_save:
        weights = (
            ("adapter_model.safetensors",)
            if is_peft and peft_save == "adapter"
            else ("model.safetensors",)
        )
        if not any((staged / w).exists() for w in weights) and not list(
            staged.glob("model-*.safetensors")
        ):
            raise ModelDirError(
                f"no {weights[0]} was written to {staged}. Under DeepSpeed ZeRO-3 set "
                "`zero3_save_16bit_model: true` in the accelerate config so the full weights are gathered."
            )
        (staged / "training_args.bin").unlink(
            missing_ok=True
        )  # a pickle; training_config.yaml says it all
        write_model_files(
            staged,
            dataset=dataset,
            run_config=run_config,
            info={**info, "peft": peft_save if is_peft else None},
            card_name=output_dir.resolve().name,
        )
        _move_into(staged, output_dir)
        shutil.rmtree(output_dir / STAGING_DIRNAME, ignore_errors=True)
        logger.info("model saved to %s", output_dir)
    accelerator.wait_for_everyone()
    return output_dir


def load_cell_model(path: str | Path, *, dtype=None, trust_remote_code: bool = False):
    """Load a saved model directory for training: ``(model, tokenizer, info)``.

    ``cellrlhf.json`` is required. Full-weight directories load directly; adapter directories
    load their base model (from ``adapter_config.json``), resize it to the tokenizer, and apply
    the adapter. Weights are read from safetensors only.
    """
    from cellrlhf.cell2text.tokenizer import load_cell_tokenizer

    path = Path(path)
    info = load_model_info(path)
    tokenizer = load_cell_tokenizer(path)
    model = _load_weights(path, tokenizer, dtype=dtype, trust_remote_code=trust_remote_code)
    return model, tokenizer, info


@dataclasses.dataclass
class LoadedModel:
    """Everything read from a model directory by :func:`load_model_dir`."""

    model: Any
    tokenizer: Any
    vocab: GeneVocab
    decoder: Any
    info: dict = dataclasses.field(default_factory=dict)
    data_manifest: dict = dataclasses.field(default_factory=dict)
    path: Path | None = None


def load_model_dir(
    model_dir: str | Path,
    *,
    device_map=None,
    dtype=None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a model directory to generate with: weights, tokenizer, vocabulary, decoder, metadata.

    Weights are read from safetensors only (a directory with pickle weights only is refused
    before transformers sees it); a reward model (a sequence classifier) is refused, since it
    cannot write answers. Without ``cellrlhf.json`` (a plain transformers model) the metadata
    is empty and a warning says so.

    Parameters
    ----------
    model_dir
        A local model directory (see :func:`cellrlhf.sft.model_files.resolve_model_dir`).
    device_map
        Passed to ``from_pretrained`` (``"auto"`` spreads the model over the available GPUs and
        CPU with accelerate; ``None`` loads on CPU).
    dtype
        Weight dtype (``"auto"``, ``torch.bfloat16``...); ``None`` keeps transformers' default.
    trust_remote_code
        Allow code shipped with the model to run. Off unless you trust the model's author.
    """
    from cellrlhf.cell2text.decoder import DECODER_FILENAME, ExpressionDecoder
    from cellrlhf.cell2text.tokenizer import load_cell_tokenizer
    from cellrlhf.sft.model_files import check_safe_weights

    model_dir = Path(model_dir)
    check_safe_weights(model_dir)
    info = load_model_info(model_dir, required=False)
    _check_generative(model_dir, info)
    for name in (VOCAB_FILENAME, DECODER_FILENAME):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(
                f"{model_dir} has no {name}: a cellrlhf model directory carries the gene "
                "vocabulary and expression decoder of its training data (copied by `cellrlhf "
                "sft`). Copy them from the dataset directory the model was trained on."
            )
    tokenizer = load_cell_tokenizer(model_dir)
    model = _load_weights(
        model_dir,
        tokenizer,
        device_map=device_map,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        vocab=GeneVocab.load(model_dir),
        decoder=ExpressionDecoder.load(model_dir),
        info=info,
        data_manifest=read_data_manifest(model_dir),
        path=model_dir,
    )


def _check_generative(model_dir: Path, info: dict) -> None:
    """Refuse a reward model (a sequence classifier): it scores answers, it cannot write them."""
    config_file = model_dir / "config.json"
    architectures = []
    if config_file.is_file():
        architectures = json.loads(config_file.read_text()).get("architectures") or []
    if info.get("stage") == "reward" or any("SequenceClassification" in a for a in architectures):
        policy = info.get("sft_model") or info.get("base_model")
        hint = f" (its policy was trained from {policy})" if policy else ""
        raise ModelDirError(
            f"{model_dir} is a reward model ({', '.join(architectures) or 'stage reward'}): it "
            f"scores answers but cannot write them. Chat with the SFT or PPO model instead{hint}."
        )


def _load_weights(path: Path, tokenizer, *, device_map=None, dtype=None, trust_remote_code=False):
    """The causal LM of ``path`` (safetensors only), in eval mode; adapters on their base model."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if dtype is not None:
        kwargs["dtype"] = dtype
    if (path / "adapter_config.json").exists():
        from peft import PeftConfig, PeftModel

        base_path = PeftConfig.from_pretrained(str(path)).base_model_name_or_path
        if not base_path:
            raise ModelDirError(
                f"{path}/adapter_config.json names no base model; it cannot be loaded."
            )
        base = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
        if base.get_input_embeddings().weight.shape[0] != len(tokenizer):
            base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model = PeftModel.from_pretrained(base, str(path))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    return model.eval()


def _move_into(staged: Path, output_dir: Path) -> None:
    """Move every entry of ``staged`` into ``output_dir``, ``cellrlhf.json`` last."""
    output_dir.mkdir(parents=True, exist_ok=True)
    marker = output_dir / MODEL_INFO_FILENAME
    if marker.exists():
        marker.unlink()  # the directory is incomplete until the new marker lands
    new_names = {p.name for p in staged.iterdir()}
    for pattern in (
        "adapter_*",
        "model*.safetensors*",
        EVIDENCE_INDEX_FILENAME,
    ):  # weights of an earlier save in another form, evidence of other data
        for stale in output_dir.glob(pattern):
            if stale.is_file() and stale.name not in new_names:
                stale.unlink()
    entries = sorted(staged.iterdir(), key=lambda p: p.name == MODEL_INFO_FILENAME)
    for entry in entries:
        target = output_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
