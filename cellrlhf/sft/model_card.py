"""Generate the Hub model card (``README.md``) of a saved cellrlhf model.

Every training stage writes the card into the model directory it saves (so the card belongs to
the model directory, owned by :mod:`cellrlhf.sft.model_dir`, below the stages that save models);
``cellrlhf push`` builds it again with the latest evaluation (:mod:`cellrlhf.hub.upload_plan`).

The card's YAML metadata lets the Hub index the model (``library_name``, ``pipeline_tag``, tags
such as ``single-cell`` and ``cell2sentence``, ``base_model``, ``datasets``, metrics of the latest
evaluation as ``model-index``); its text says what the model was trained on, what it is for,
what it must not be used for, and how to load it and talk to it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellrlhf.data.layout import EVIDENCE_INDEX_FILENAME
from cellrlhf.data.source_info import source_lines
from cellrlhf.sft.eval_results import EvalSummary, find_eval_files, latest_eval
from cellrlhf.sft.model_dir import read_data_manifest
from cellrlhf.sft.model_files import looks_like_hub_id

__all__ = [
    "ModelMetadata",
    "read_model_metadata",
    "build_model_card",
    "write_model_card",
    "write_stage_card",
    "CARD_TAGS",
]

logger = logging.getLogger(__name__)

CARD_TAGS = ("cellrlhf", "single-cell", "cell2sentence", "scRNA-seq", "biology")
_STAGE_TAGS = {
    "pretrain": ("cell-language-model",),
    "sft": ("sft", "instruction-tuning"),
    "reward": ("reward-model",),
    "ppo": ("rlhf", "ppo"),
    "grpo": ("rlhf", "grpo"),
    "rloo": ("rlhf", "rloo"),
}
_STAGE_NAMES = {
    "pretrain": "A cell language model pretrained on cell sentences",
    "sft": "A cell language model instruction-tuned (SFT) on chat-form cell tasks",
    "reward": "A reward model that scores a cell language model's perturbation predictions",
    "ppo": "A cell language model aligned with RLHF (PPO) on perturbation-response fidelity",
    "grpo": "A cell language model aligned with RL (GRPO) on perturbation-response fidelity",
    "rloo": "A cell language model aligned with RL (RLOO) on perturbation-response fidelity",
}


@dataclass
class ModelMetadata:
    """What a model directory says about itself (all optional beyond the directory)."""

    model_dir: Path
    info: dict[str, Any] = field(default_factory=dict)  # cellrlhf.json
    data_manifest: dict[str, Any] = field(default_factory=dict)
    training_config: dict[str, Any] = field(default_factory=dict)
    training_config_text: str = ""
    n_genes: int | None = None
    evaluation: EvalSummary | None = None

    @property
    def stage(self) -> str:
        return str(self.info.get("stage", "sft"))

    @property
    def base_model(self) -> str | None:
        value = self.info.get("base_model")
        return str(value) if value else None

    @property
    def hub_base_model(self) -> str | None:
        """``base_model`` when it is a Hub id (a local path is no valid card metadata)."""
        value = self.base_model
        if value and looks_like_hub_id(value) and not Path(value).exists():
            return value
        return None

    @property
    def hub_datasets(self) -> list[str]:
        """Hub ids of the training data, when the data manifest names any."""
        found = []
        for key in ("hub_datasets", "datasets", "hub_id", "repo_id"):
            value = self.data_manifest.get(key)
            values = value if isinstance(value, list) else [value]
            found += [v for v in values if isinstance(v, str) and looks_like_hub_id(v)]
        return list(dict.fromkeys(found))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    payload = json.loads(path.read_text())
    return payload if isinstance(payload, dict) else {}


def read_model_metadata(model_dir: str | Path, *, eval_results=()) -> ModelMetadata:
    """Collect ``cellrlhf.json``, the data manifest, the training config, the vocabulary size and
    the latest evaluation (``eval_results.json`` in the directory, plus ``eval_results`` paths)."""
    import yaml

    model_dir = Path(model_dir)
    meta = ModelMetadata(model_dir=model_dir)
    meta.info = _read_json(model_dir / "cellrlhf.json")
    meta.data_manifest = read_data_manifest(model_dir)
    config_path = model_dir / "training_config.yaml"
    if config_path.is_file():
        meta.training_config_text = config_path.read_text()
        loaded = yaml.safe_load(meta.training_config_text)
        meta.training_config = loaded if isinstance(loaded, dict) else {}
    vocab = _read_json(model_dir / "gene_vocab.json")
    if "genes" in vocab:
        meta.n_genes = len(vocab["genes"])
    meta.evaluation = latest_eval(find_eval_files(model_dir, eval_results))
    return meta


# the kinds cellrlhf evaluate summarises over (cellrlhf.evaluation.scoring.summarize)
_HELD_OUT_KINDS = ("all", "single", "combo")


def _metric_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "metric"


def _card_data(meta: ModelMetadata, license: str | None, name: str):
    from huggingface_hub import EvalResult, ModelCardData

    tags = list(CARD_TAGS) + list(_STAGE_TAGS.get(meta.stage, (meta.stage,)))
    eval_results = None
    if meta.evaluation is not None:
        ev = meta.evaluation
        dataset = ev.dataset or str(meta.data_manifest.get("name", "cellrlhf-dataset"))
        eval_results = []
        for name, value in ev.metrics.items():
            metric, _, kind = name.rpartition("/")
            if kind not in _HELD_OUT_KINDS:  # a plain (possibly nested) metric name
                metric, kind = name, ""
            eval_results.append(
                EvalResult(
                    task_type="text-generation",
                    task_name="perturbation response prediction (held-out perturbations)"
                    if kind
                    else "cell language tasks",
                    dataset_type=dataset,
                    dataset_name=dataset,
                    dataset_split=ev.split,
                    metric_type=_metric_slug(metric),
                    metric_name=f"{metric} ({kind} perturbations)" if kind else name,
                    metric_config=kind or None,
                    metric_value=round(value, 6),
                )
            )
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="text-classification" if meta.stage == "reward" else "text-generation",
        tags=list(dict.fromkeys(tags)),
        base_model=meta.hub_base_model,
        datasets=meta.hub_datasets or None,
        license=license,
        metrics=list(dict.fromkeys(r.metric_type for r in eval_results)) if eval_results else None,
        eval_results=eval_results,
        model_name=name if eval_results else None,
    )


def _data_section(manifest: dict) -> str:
    if not manifest:
        return "The training data manifest was not saved with this model.\n"
    lines = []
    name = manifest.get("name")
    if name:
        lines.append(f"- Dataset: `{name}`")
    source = manifest.get("source") or manifest.get("sources")
    if source:
        lines += source_lines(source)
    contexts = manifest.get("cell_contexts")
    if isinstance(contexts, list) and contexts:
        lines.append(f"- Cell contexts: {', '.join(map(str, contexts[:30]))}")
    targets = manifest.get("perturbation_targets")
    if isinstance(targets, list) and targets:
        more = f" ... ({len(targets)} in all)" if len(targets) > 30 else ""
        lines.append(f"- Perturbation targets: {', '.join(map(str, targets[:30]))}{more}")
    counts = manifest.get("counts")
    if isinstance(counts, dict) and counts:
        flat = ", ".join(f"{k}: {v}" for k, v in counts.items() if not isinstance(v, (dict, list)))
        if flat:
            lines.append(f"- Counts: {flat}")
    if manifest.get("simulated"):
        lines.append(
            "- **The training data were simulated** (a pipeline demonstration): this model has "
            "learned nothing about real biology."
        )
    return ("\n".join(lines) + "\n") if lines else "See `data_manifest.json`.\n"


def _eval_section(ev: EvalSummary | None) -> str:
    if ev is None:
        return (
            "No evaluation results were saved with this model. Run `cellrlhf evaluate` and push "
            "again with `--eval-results` to add them.\n"
        )
    where = f" on `{ev.dataset}`" if ev.dataset else ""
    split = f" ({ev.split} split)" if ev.split else ""
    rows = "\n".join(f"| {name} | {value:.4g} |" for name, value in ev.metrics.items())
    return f"Latest evaluation{where}{split}, from `{ev.source.name}`:\n\n| metric | value |\n|---|---|\n{rows}\n"


_KEY_HYPERPARAMETERS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "lr_scheduler_type",
    "weight_decay",
    "perturbation_dropout",
    "use_peft",
    "kl_coef",
    "num_generations",
    "seed",
)


def _find_values(config, keys) -> dict:
    """First value of each of ``keys`` anywhere in a nested config."""
    found: dict = {}

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in keys and key not in found and not isinstance(value, (dict, list)):
                    found[key] = value
                walk(value)

    walk(config)
    return {k: found[k] for k in keys if k in found and found[k] is not None}


def _training_section(meta: ModelMetadata) -> str:
    lines = [f"- Stage: `{meta.stage}`"]
    if meta.base_model:
        base = meta.hub_base_model
        shown = (
            f"[`{base}`](https://huggingface.co/{base})"
            if base
            else f"`{Path(meta.base_model).name}` (a local model)"
        )
        lines.append(f"- Base model: {shown}")
    else:
        config = _find_values(meta.training_config, ("model_config",)).get("model_config")
        where = f" from the model config `{Path(str(config)).name}`" if config else ""
        lines.append(f"- Base model: none, trained from scratch{where} (see `config.json`)")
    mode = meta.info.get("tokenizer_mode")
    if mode:
        lines.append(f"- Tokenizer mode: `{mode}` (how genes become tokens)")
    if meta.n_genes:
        lines.append(f"- Gene vocabulary: {meta.n_genes} genes (`gene_vocab.json`)")
    kinds = ((meta.data_manifest.get("evidence") or {}).get("kinds")) or []
    if (
        kinds
        and meta.model_dir is not None
        and (meta.model_dir / EVIDENCE_INDEX_FILENAME).is_file()
    ):
        lines.append(
            f"- Measured evidence in its prompts: {', '.join(f'`{k}`' for k in kinds)} "
            "(`evidence_index.json`: the training data's pseudo-bulks as written in the prompts; "
            "`predict_perturbation` and the chat show the same blocks, docs/evidence.md)"
        )
    text = "\n".join(lines) + "\n"
    hyper = _find_values(meta.training_config, _KEY_HYPERPARAMETERS)
    if hyper:
        rows = "\n".join(f"| {k} | {v} |" for k, v in hyper.items())
        text += f"\n| hyperparameter | value |\n|---|---|\n{rows}\n"
    if meta.training_config_text.strip():
        text += "\nEvery argument of the run is in `training_config.yaml`.\n"
    return text


_BODY = """
# {title}

{what}, built with [cellrlhf](https://github.com/cellrlhf/cellrlhf). Each
cell is written as a *cell sentence*: its expressed genes ranked by expression, highest first
(the [Cell2Sentence](https://doi.org/10.1101/2023.09.11.557287) idea). The model reads and writes
cell sentences inside ordinary chat messages, wrapped as `<cell> GENE1 GENE2 ... </cell>`.

## Intended use

Research on single-cell data: annotating cells, predicting how a cell's expression responds to a
genetic or chemical perturbation, generating cells of a given type, and asking questions about
cells in natural language. Predictions are hypotheses to test, not measurements.

**Out of scope:** clinical or diagnostic decisions about people. The model only knows the genes
of its vocabulary; cells whose genes mostly fall outside it are represented poorly (cellrlhf
reports the overlap when it encodes your cells).

{usage}## Training data

{data}
## Training

{training}
## Evaluation

{evaluation}
## Limitations

- Cell sentences keep the rank order of expressed genes, not exact counts; profiles decoded from
  generated sentences are estimates from rank (see `expression_decoder.json`).
- Perturbations whose targets were never seen in training are written `<unk_pert>`; the model
  then predicts a generic response.
- Behaviour outside the cell types, perturbation types and gene panel of the training data is
  unknown.

## Files

{files}
"""


_CHAT_USAGE = """## How to use

```bash
pip install "cellrlhf[chat]"
```

```python
import anndata as ad
from cellrlhf.chat import CellLM

lm = CellLM.from_pretrained("{repo_id}")  # safetensors only, no remote code
adata = ad.read_h5ad("my_cells.h5ad")
labels = lm.annotate(adata[:10])  # DataFrame: label, score, answer
pred = lm.predict_perturbation(adata[:10], "{example_target}", cell_context="{example_context}")
print(pred.top_up, pred.top_down)  # genes up / down against the control cells
pred.write("prediction.h5ad")  # predicted profiles as AnnData
cells = lm.generate_cells("{example_context}", n=8)  # AnnData of generated cells
for piece in lm.chat([{{"role": "user", "content": lm.cell_question(adata[0], "What is this cell?")}}], stream=True):
    print(piece, end="")
```

Chat in the terminal or in the browser:

```bash
cellrlhf chat --model {repo_id} --adata my_cells.h5ad
cellrlhf serve --model {repo_id}          # gradio app on http://127.0.0.1:7860
```

The weights are a standard `transformers` causal LM (`AutoModelForCausalLM`); the tokenizer
carries the chat template. `gene_vocab.json` and `expression_decoder.json` turn cells into
sentences and generated sentences back into expression profiles.

"""

_REWARD_USAGE = """## How to use

This is a reward model: a sequence classifier that scores an answer to a perturbation prompt
(higher is a more faithful predicted response). It is used by `cellrlhf ppo` / `grpo`:

```bash
cellrlhf ppo --rewards model --reward_model_path {repo_id} ...
```

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model = AutoModelForSequenceClassification.from_pretrained("{repo_id}", use_safetensors=True)
tokenizer = AutoTokenizer.from_pretrained("{repo_id}")  # carries the chat template
```

"""


def build_model_card(
    model_dir: str | Path,
    *,
    repo_id: str | None = None,
    eval_results=(),
    license: str | None = None,
    files: list[str] | None = None,
):
    """The model card of ``model_dir`` as a :class:`huggingface_hub.ModelCard`.

    Parameters
    ----------
    model_dir
        A saved model directory.
    repo_id
        Hub id used in the usage examples (defaults to the directory name).
    eval_results
        Extra evaluation JSON files or directories (besides ``eval_results.json`` in the model
        directory); the latest evaluation's metrics go into the card.
    license
        SPDX id (``apache-2.0``, ``mit``, ...) of the weights; left out when unknown.
    files
        The repository's file names, listed in the card.
    """
    from huggingface_hub import ModelCard

    meta = read_model_metadata(model_dir, eval_results=eval_results)
    repo_id = repo_id or f"your-name/{meta.model_dir.resolve().name}"
    data = _card_data(meta, license, repo_id.split("/")[-1])
    usage_template = _REWARD_USAGE if meta.stage == "reward" else _CHAT_USAGE
    usage = usage_template.format(
        repo_id=repo_id,
        example_target=(meta.data_manifest.get("perturbation_targets") or ["KLF1"])[0],
        example_context=(meta.data_manifest.get("cell_contexts") or ["K562"])[0],
    )
    body = _BODY.format(
        usage=usage,
        title=repo_id.split("/")[-1],
        what=_STAGE_NAMES.get(meta.stage, f"A cell language model (`{meta.stage}` stage)"),
        data=_data_section(meta.data_manifest),
        training=_training_section(meta),
        evaluation=_eval_section(meta.evaluation),
        files="\n".join(f"- `{f}`" for f in (files or [])) or "See the repository's files.",
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_model_card(
    model_dir: str | Path,
    *,
    repo_id: str | None = None,
    eval_results=(),
    license: str | None = None,
) -> Path:
    """Write the project's card as ``model_dir/README.md`` (replacing a trainer's placeholder).

    Every stage calls it on its saved directory, so a model carries its card before it is
    pushed. ``license`` defaults to the training data's licence when the data manifest names
    one; otherwise the card leaves it out (``cellrlhf push`` asks for it).
    """
    from cellrlhf.data.source_info import source_license

    model_dir = Path(model_dir)
    meta = read_model_metadata(model_dir)
    license = license or source_license(meta.data_manifest.get("source"))
    files = sorted({p.name for p in model_dir.iterdir() if p.is_file()} | {"README.md"})
    card = build_model_card(
        model_dir, repo_id=repo_id, eval_results=eval_results, license=license, files=files
    )
    path = model_dir / "README.md"
    path.write_text(str(card))
    return path


def write_stage_card(model_dir: str | Path, name: str) -> Path | None:
    """:func:`write_model_card` for a training stage's freshly saved directory (``name``: the
    output directory's name): a card that cannot be written is logged, never fatal to the run."""
    try:
        return write_model_card(model_dir, repo_id=f"your-name/{name}")
    except (OSError, ValueError, ImportError) as err:
        logger.warning("the model card of %s was not written: %s", model_dir, err)
        return None
