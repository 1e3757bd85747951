"""Generate the Hub dataset card (``README.md``) of a dataset built by ``cellrlhf data build``."""

from __future__ import annotations

from pathlib import Path

from cellrlhf.data.layout import read_dataset_manifest
from cellrlhf.data.source_info import source_license, source_lines

__all__ = ["build_dataset_card", "DATASET_TAGS"]

DATASET_TAGS = ("cellrlhf", "single-cell", "cell2sentence", "scRNA-seq", "biology", "perturbation")

_SUBSET_TEXT = {
    "pretrain": "cell sentences for causal-LM pretraining (column `text`)",
    "sft": "chat-form instruction examples (`messages`, `task`, `perturbation`, `cell_context`)",
    "rl": "RL prompts with real pseudo-bulk references (`prompt`, `reference_perturbed`, "
    "`reference_control`, `decoded_control`, `reference_sentences`, DE genes)",
}

_BODY = """
# {title}

Training data for cell language models, built with [cellrlhf](https://github.com/cellrlhf/cellrlhf)
(`cellrlhf data build`). Cells are written as *cell sentences*: expressed genes ranked by
expression, highest first, wrapped as `<cell> GENE1 GENE2 ... </cell>` inside chat messages.
{simulated}
## Subsets

{subsets}

```python
from datasets import load_dataset

sft = load_dataset("{repo_id}", "sft")
```

`gene_vocab.json` is the gene vocabulary, `expression_decoder.json` maps ranks back to expression
(fitted on training cells only), `splits.json` records which perturbations and cells are in which
split, and `manifest.json` holds the build configuration, source checksums and counts.

## Sources

{sources}
"""


def build_dataset_card(
    dataset_dir: str | Path,
    *,
    configs: dict[str, dict[str, list[str]]],
    repo_id: str | None = None,
    license: str | None = None,
):
    """A :class:`huggingface_hub.DatasetCard` whose metadata declares one config per subset.

    Parameters
    ----------
    dataset_dir
        The dataset directory (its ``manifest.json`` is summarized).
    configs
        ``{subset: {split: [paths in repo]}}`` as staged by the upload plan.
    repo_id
        Hub id used in the loading example.
    license
        SPDX license id; it must allow redistribution of the source data. Default: the
        source's license recorded in the manifest.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    dataset_dir = Path(dataset_dir)
    manifest = read_dataset_manifest(dataset_dir, required=False) or {}
    repo_id = repo_id or f"your-name/{dataset_dir.resolve().name}"
    config_meta = [
        {
            "config_name": subset,
            "data_files": [
                {"split": split, "path": f"data/{subset}/{split}-*.parquet"} for split in splits
            ],
        }
        for subset, splits in configs.items()
    ]
    tags = list(DATASET_TAGS) + (["synthetic"] if manifest.get("simulated") else [])
    data = DatasetCardData(
        license=license or source_license(manifest.get("source")),
        tags=tags,
        pretty_name=str(manifest.get("name") or dataset_dir.resolve().name),
        task_categories=["text-generation"],
        configs=config_meta,
    )
    subsets = "\n".join(
        f"- `{subset}` ({', '.join(splits)}): {_SUBSET_TEXT.get(subset, '')}"
        for subset, splits in configs.items()
    )
    source = manifest.get("source") or manifest.get("sources")
    described = source_lines(source) if source else []
    simulated = (
        "\n**These data are simulated** (a pipeline demonstration), not measurements.\n"
        if manifest.get("simulated")
        else ""
    )
    body = _BODY.format(
        title=repo_id.split("/")[-1],
        simulated=simulated,
        subsets=subsets,
        repo_id=repo_id,
        sources="\n".join(described) or "See `manifest.json`.",
    )
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")
