"""Build the model and tokenizer a run trains.

Three sources:

- ``--model_config configs/model/<preset>.yaml``: a fresh Llama-style model with the cell
  tokenizer built from the dataset (one token per measured gene and per perturbation target,
  markup tokens, prompt words); tokenizer mode ``gene_tokens``.
- ``--model_name_or_path <cellrlhf model dir>`` (a ``pretrain`` or ``sft`` output): its tokenizer
  and mode are kept; genes of the new dataset that lack a token get one.
- ``--model_name_or_path <any causal LM>`` (directory or Hub id): ``added_gene_tokens`` adds one
  token per gene, initialised from the mean of the LM's embeddings of the symbol's text pieces;
  ``genes_as_text`` keeps genes as text (Cell2Sentence-style checkpoints).

Weights load from safetensors only; remote code runs only with ``--trust_remote_code``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cellrlhf.data.layout import DatasetDir
from cellrlhf.sft.checkpoints import STAGING_DIRNAME
from cellrlhf.sft.gene_embedding_init import init_gene_embeddings

__all__ = [
    "ModelBundle",
    "check_model_fields",
    "check_model_source",
    "read_model_fields",
    "load_model_config",
    "build_model_and_tokenizer",
    "peft_config_for",
]

logger = logging.getLogger(__name__)


@dataclass
class ModelBundle:
    """A model ready to train and its tokenizer.

    Attributes
    ----------
    model, tokenizer
        The causal LM and the tokenizer (with the project's chat template).
    tokenizer_mode
        ``gene_tokens``, ``added_gene_tokens`` or ``genes_as_text``.
    base_model
        Where the weights came from (model config path, checkpoint path or Hub id).
    new_token_ids
        Ids of tokens added to a pretrained model's vocabulary in this run (their embeddings are
        new, so LoRA must train the embedding layers too).
    gene_examples
        A few perturbation targets (or genes), used to check the tokenizer.
    """

    model: object
    tokenizer: object
    tokenizer_mode: str
    base_model: str | None
    new_token_ids: list[int] = field(default_factory=list)
    gene_examples: tuple[str, ...] = ()


def load_model_config(path: str | Path, tokenizer):
    """A ``transformers`` config from a ``configs/model`` YAML, sized to ``tokenizer``.

    The YAML holds ``model_type`` (default ``llama``) and that architecture's config fields;
    ``vocab_size`` and the special token ids are taken from the tokenizer.
    """
    from transformers import AutoConfig

    fields = read_model_fields(path)
    model_type = fields.pop("model_type", "llama")
    for reserved in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"):
        if reserved in fields:
            raise ValueError(f"{path} sets {reserved}; it comes from the tokenizer, remove it.")
    check_model_fields(path, model_type, fields)
    return AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **fields,
    )


def check_model_fields(path: str | Path, model_type: str, fields: dict) -> None:
    """Refuse keys the ``model_type``'s config class does not know and values it rejects.

    ``transformers`` configs keep unknown keyword arguments as attributes, so a typo such as
    ``hiden_size`` would silently train the default size and land in ``config.json``.

    Raises
    ------
    ValueError
        Naming the unknown keys (and the known ones) or the key with the wrong type.
    """
    from huggingface_hub.errors import StrictDataclassError
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"{path}: unknown model_type {model_type!r}; e.g. llama, qwen2, gpt2 "
            "(any transformers architecture)."
        )
    config_class = CONFIG_MAPPING[model_type]
    defaults = config_class().to_dict()
    # keys the class consumes (rope_theta -> rope_parameters, ...) leave no attribute behind;
    # a key it does not know stays as a new attribute
    try:
        built = config_class(**fields).to_dict()
    except (TypeError, ValueError, StrictDataclassError) as err:
        message = " ".join(str(err).split())
        hint = (
            " (YAML reads 1e-5 as text: write 1.0e-5)"
            if any(isinstance(v, str) and _is_number(v) for v in fields.values())
            else ""
        )
        raise ValueError(f"{path}: {message}{hint}") from None
    unknown = sorted(k for k in fields if k in built and k not in defaults)
    if unknown:
        known = sorted(k for k in defaults if not k.startswith("_") and k != "transformers_version")
        raise ValueError(
            f"{path}: unknown model config key(s) {unknown} for model_type {model_type!r}; "
            f"known keys: {known}."
        )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_model_fields(path: str | Path) -> dict:
    """The fields of a ``configs/model`` YAML (a mapping)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model config {path} does not exist; presets are in configs/model/."
        )
    fields = yaml.safe_load(path.read_text()) or {}
    if not isinstance(fields, dict):
        raise ValueError(f"{path} must hold a YAML mapping of model config fields.")
    return fields


def check_model_source(name: str | Path | None) -> None:
    """Refuse a ``--model_name_or_path`` that names a local directory that does not exist.

    A name that starts with ``.``, ``/`` or ``~`` or has more than one ``/`` is a path, never a
    Hub repo id; without this check ``transformers`` reports it as an invalid repo id.

    Raises
    ------
    FileNotFoundError
        Naming the directory.
    """
    if name is None:
        return
    text = str(name)
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if looks_local and not Path(text).expanduser().exists():
        raise FileNotFoundError(
            f"model directory {text} does not exist; pass the directory a training stage wrote "
            "(its output_dir) or a Hugging Face Hub id like 'org/model'."
        )


def build_model_and_tokenizer(
    model_args,
    training_args,
    dataset: DatasetDir,
    *,
    texts: Callable[[], Iterable[str]] = tuple,
    tokenizer_from: str | Path | None = None,
) -> ModelBundle:
    """Build the model and tokenizer described by ``model_args`` for ``dataset``.

    Parameters
    ----------
    model_args
        :class:`~cellrlhf.sft.configs.CellModelArguments`.
    training_args
        The training config (seed, ``trust_remote_code``).
    dataset
        The dataset directory: its gene vocabulary and perturbation targets get tokens.
    texts
        Returns the dataset's texts (prompt words for a fresh tokenizer); called only then.
    tokenizer_from
        A checkpoint being resumed: a fresh model takes the tokenizer saved there instead of
        building one, so token ids match the checkpoint's weights.
    """
    from transformers import set_seed

    from cellrlhf.sft.model_dir import is_cell_model_dir

    check_model_source(model_args.model_name_or_path)
    set_seed(training_args.seed)
    vocab = dataset.vocab()
    targets = dataset.perturbation_targets()
    genes = list(dict.fromkeys([*vocab.genes, *targets]))
    examples = tuple(targets[:2]) if len(targets) >= 2 else tuple(genes[:2])
    if model_args.model_config:
        shared_dir = Path(training_args.output_dir) / STAGING_DIRNAME / "tokenizer"
        bundle = _fresh_model(model_args, vocab, targets, texts, tokenizer_from, shared_dir)
    elif is_cell_model_dir(model_args.model_name_or_path):
        bundle = _cell_model(model_args, training_args, genes)
    else:
        bundle = _pretrained_lm(model_args, training_args, genes)
    bundle.gene_examples = examples
    _sync_special_tokens(bundle.model, bundle.tokenizer)
    n_params = sum(p.numel() for p in bundle.model.parameters())
    logger.info(
        "model: %s (%s, %.2fM parameters, %d tokens)",
        bundle.base_model,
        bundle.tokenizer_mode,
        n_params / 1e6,
        len(bundle.tokenizer),
    )
    return bundle


def peft_config_for(model_args, bundle: ModelBundle):
    """TRL's LoRA config from ``model_args`` (``None`` without ``--use_peft``).

    When this run added tokens to a pretrained vocabulary, the input and output embedding layers
    are trained and saved in full (``modules_to_save``): the new rows are untrained otherwise.
    """
    from trl import get_peft_config

    config = get_peft_config(model_args)
    if config is None or not bundle.new_token_ids:
        return config
    names = _embedding_module_names(bundle.model)
    config.modules_to_save = list(dict.fromkeys([*(config.modules_to_save or []), *names]))
    logger.info("LoRA: training the resized embedding layers %s in full", names)
    return config


# ---------------------------------------------------------------------------- sources
def _fresh_model(model_args, vocab, targets, texts, tokenizer_from, shared_dir) -> ModelBundle:
    from transformers import AutoModelForCausalLM

    from cellrlhf.cell2text.tokenizer import build_cell_tokenizer, load_cell_tokenizer

    fields = read_model_fields(model_args.model_config)
    if tokenizer_from is not None:
        tokenizer = load_cell_tokenizer(tokenizer_from)
    else:
        tokenizer = _build_once(
            lambda: build_cell_tokenizer(
                vocab,
                extra_genes=targets,
                texts=texts(),
                model_max_length=fields.get("max_position_embeddings"),
            ),
            shared_dir,
        )
    config = load_model_config(model_args.model_config, tokenizer)
    if model_args.attn_implementation:
        config._attn_implementation = model_args.attn_implementation
    model = AutoModelForCausalLM.from_config(config, dtype=_dtype(model_args.dtype))
    return ModelBundle(model, tokenizer, "gene_tokens", str(model_args.model_config))


def _cell_model(model_args, training_args, genes) -> ModelBundle:
    from cellrlhf.cell2text.tokenizer import gene_token_ids, load_cell_tokenizer, tokenizer_mode
    from cellrlhf.sft.model_dir import load_model_info

    path = model_args.model_name_or_path
    info = load_model_info(path)
    tokenizer = load_cell_tokenizer(path)
    mode = tokenizer_mode(tokenizer) or info.get("tokenizer_mode", "gene_tokens")
    if model_args.tokenizer_mode not in ("auto", mode):
        raise ValueError(
            f"{path} was trained with tokenizer_mode={mode!r}; it cannot continue as "
            f"{model_args.tokenizer_mode!r}. Leave tokenizer_mode at auto."
        )
    model = _from_pretrained(path, model_args, training_args)
    new_ids: list[int] = []
    if mode != "genes_as_text":
        missing = [g for g, i in zip(genes, gene_token_ids(tokenizer, genes), strict=True) if i < 0]
        if missing:
            logger.warning(
                "%d gene(s) of this dataset have no token in %s (e.g. %s); adding them",
                len(missing),
                path,
                missing[:5],
            )
            tokenizer, new_ids = _add_genes(model, tokenizer, missing, model_args)
            mode = tokenizer_mode(tokenizer) or mode
    return ModelBundle(model, tokenizer, mode, str(path), new_ids)


def _pretrained_lm(model_args, training_args, genes) -> ModelBundle:
    from transformers import AutoTokenizer

    from cellrlhf.cell2text.tokenizer import genes_as_text_tokenizer

    path = model_args.model_name_or_path
    mode = "added_gene_tokens" if model_args.tokenizer_mode == "auto" else model_args.tokenizer_mode
    if mode == "gene_tokens":
        raise ValueError(
            "tokenizer_mode=gene_tokens builds a fresh tokenizer, which a pretrained LM's embeddings do "
            "not match; use added_gene_tokens or genes_as_text with --model_name_or_path, or "
            "--model_config for a fresh model."
        )
    base = AutoTokenizer.from_pretrained(
        path, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
    )
    model = _from_pretrained(path, model_args, training_args)
    if mode == "genes_as_text":
        # genes stay text; the markup (<cell>, <pert>, <unk_pert>, ...) becomes tokens
        tokenizer = genes_as_text_tokenizer(base, add_markup_tokens=True)
        before = len(base)
        new_ids = list(range(before, len(tokenizer)))
        model.resize_token_embeddings(len(tokenizer))
        if model_args.gene_embedding_init == "mean_pieces" and new_ids:
            texts = tokenizer.convert_ids_to_tokens(new_ids)
            encoded = base(texts, add_special_tokens=False)["input_ids"]
            init_gene_embeddings(model, dict(zip(new_ids, encoded, strict=True)))
        return ModelBundle(model, tokenizer, mode, str(path), new_ids)
    tokenizer, new_ids = _add_genes(model, base, genes, model_args)
    return ModelBundle(model, tokenizer, mode, str(path), new_ids)


# ---------------------------------------------------------------------------- helpers
def _build_once(build: Callable, shared_dir: Path):
    """Build the tokenizer on the main process only; the others load its saved copy.

    Every process must train with the same token ids; building once also saves the work.
    (Several machines need a shared output directory, as checkpoints do.)
    """
    from accelerate import PartialState

    from cellrlhf.cell2text.tokenizer import load_cell_tokenizer

    state = PartialState()
    if state.num_processes == 1:
        return build()
    tokenizer = None
    if state.is_main_process:
        tokenizer = build()
        tokenizer.save_pretrained(shared_dir)
    state.wait_for_everyone()
    if tokenizer is None:
        tokenizer = load_cell_tokenizer(shared_dir)
    state.wait_for_everyone()
    return tokenizer


def _add_genes(model, tokenizer, genes, model_args):
    """Tokenizer with gene tokens added; ``model`` resized, new rows initialised from their pieces."""
    from cellrlhf.cell2text.tokenizer import add_gene_tokens

    added = add_gene_tokens(tokenizer, genes)
    model.resize_token_embeddings(len(added.tokenizer))
    if model_args.gene_embedding_init == "mean_pieces":
        init_gene_embeddings(model, added.init_pieces)
    return added.tokenizer, list(added.new_token_ids)


def _from_pretrained(path, model_args, training_args):
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    quantization = get_quantization_config(model_args)
    kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "use_safetensors": True,
        "dtype": _dtype(model_args.dtype),
    }
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if (
        quantization is not None
    ):  # QLoRA: bitsandbytes places the quantized weights on this process's GPU
        from accelerate import PartialState

        kwargs.update(
            quantization_config=quantization, device_map={"": PartialState().local_process_index}
        )
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def _dtype(name: str | None):
    import torch

    if name in (None, "auto"):
        return "auto" if name == "auto" else torch.float32
    return getattr(torch, name)


def _sync_special_tokens(model, tokenizer) -> None:
    """Make the model's config and generation config use the tokenizer's special tokens."""
    for holder in (model.config, getattr(model, "generation_config", None)):
        if holder is None:
            continue
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(tokenizer, name)
            if value is not None:
                setattr(holder, name, value)


def _embedding_module_names(model) -> list[str]:
    wanted = {id(model.get_input_embeddings()): None}
    output = model.get_output_embeddings()
    if output is not None:
        wanted[id(output)] = None
    return [
        name.rsplit(".", 1)[-1] for name, module in model.named_modules() if id(module) in wanted
    ]
