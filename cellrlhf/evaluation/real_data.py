"""The real cells of a built dataset's split, read back from its source with the build's transform.

A built dataset directory records everything needed to find its cells again: the data config
(source, schema, expression layer and transform) and the source checksum in ``manifest.json``,
and the cell ids of every split in ``splits.json``. :func:`real_cells` reopens the source (a
registered data set, a local ``.h5ad``, or the simulator, regenerated from its recorded settings
and seed), checks that it is the same data, and returns the split's cells as AnnData with the
values the build used for references, DE and the decoder (the layer mapped onto the gene
vocabulary, then the configured transform).

Control cells are included: a split's own controls, or the training controls of a cell context
where the split borrowed them (``unseen_single`` test splits have no controls of their own; the
RL test prompts record which split their controls came from in ``control_split``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["SourceNotFoundError", "SourceChecksumError", "real_cells", "REAL_CELLS_KEY"]

logger = logging.getLogger(__name__)

REAL_CELLS_KEY = "cellrlhf_real_cells"
_SPLITS = ("train", "validation", "test")


class SourceNotFoundError(FileNotFoundError):
    """The source data of a built dataset cannot be found."""


class SourceChecksumError(RuntimeError):
    """The source found is not the data the dataset was built from."""


def _open(config, data_dir, cache_dir):
    from cellrlhf.data.loading import open_source
    from cellrlhf.data.registry import DATA_DIR_ENV, ChecksumError

    try:
        return open_source(
            config.source, data_dir=data_dir, cache_dir=cache_dir, layer=config.expression.layer
        )
    except ChecksumError as err:
        raise SourceChecksumError(str(err)) from err
    except FileNotFoundError as err:
        raise SourceNotFoundError(
            f"the source data of this dataset cannot be found: {err} Point at the directory "
            f"holding it with --data-dir (Python: data_dir=) or ${DATA_DIR_ENV}."
        ) from err


def _vocab_mapping(source, expression):
    from cellrlhf.cell2text.vocab import GeneVocab

    if expression.gene_symbols is None:
        names, where = list(source.var.index), "var_names"
    else:
        names = list(source.var[expression.gene_symbols])
        where = f"var[{expression.gene_symbols!r}]"
    return GeneVocab.from_names_with_mapping(names, where, duplicates=expression.duplicates)


def _control_splits(dataset_dir: Path, split: str, contexts: list[str]) -> dict[str, str]:
    """Which split's controls serve ``split`` in each context (recorded by the RL prompts)."""
    from cellrlhf.data.layout import open_dataset_dir

    recorded: dict[str, str] = {}
    rl = open_dataset_dir(dataset_dir).rl
    if rl is not None and split in rl and "control_split" in rl[split].column_names:
        for ctx, where in zip(rl[split]["cell_context"], rl[split]["control_split"], strict=True):
            recorded.setdefault(str(ctx), str(where))
    return {ctx: recorded.get(ctx, "") for ctx in contexts}


def _expression(source, rows: np.ndarray, mapping, expression, progress: bool, n_genes: int):
    """Source rows (in the order given) on the vocabulary, transformed as the build did, as
    float32 CSR; read in source order."""
    from tqdm.auto import tqdm

    from cellrlhf.data.expression import iter_expression_blocks

    read_order = np.argsort(rows, kind="stable")
    iterator = iter_expression_blocks(
        source.expression.matrix,
        rows[read_order],
        mapping=mapping,
        transform=expression.transform,
        chunk_size=expression.chunk_size,
    )
    blocks = [
        sp.csr_matrix(block.values(), dtype=np.float32, copy=True)
        for block in tqdm(iterator, desc="real cells", unit="block", disable=not progress)
    ]
    empty = sp.csr_matrix((0, n_genes), dtype=np.float32)
    X = sp.vstack(blocks, format="csr") if blocks else empty
    return X[np.argsort(read_order)] if X.shape[0] else empty


def real_cells(
    dataset_dir: str | os.PathLike,
    split: str = "test",
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    include_controls: bool = True,
    progress: bool = True,
):
    """The real cells of ``split`` of a built dataset, as the build saw them.

    Parameters
    ----------
    dataset_dir
        A directory written by ``cellrlhf data build``.
    split
        ``"train"``, ``"validation"`` or ``"test"``.
    data_dir, cache_dir
        Where a registered source data set is looked up (``$CELLRLHF_DATA_DIR`` is searched
        too); simulated sources are regenerated from their recorded settings.
    include_controls
        Add the control cells that serve the split in each of its cell contexts (its own, or
        the training controls it borrowed) when the split lacks them.
    progress
        Progress bar while the expression is read.

    Returns
    -------
    AnnData: ``X`` = expression on the dataset's gene vocabulary (``var_names``), after the
    build's transform (``manifest["expression"]``), float32 CSR; ``obs`` = the perturbation
    schema columns (``perturbation``, ``cell_context``, ``perturbation_type``, ``dose``,
    ``batch``) and ``split`` (where each cell is listed in ``splits.json``); cells of ``split``
    in ``splits.json`` order, then borrowed controls. ``uns["cellrlhf_real_cells"]["params"]``
    records the dataset fingerprint, split, transform and whether the data are simulated.

    Raises
    ------
    SourceNotFoundError
        The source file is in no data directory or cache (pass ``data_dir``).
    SourceChecksumError
        The file found differs from the one the dataset was built from.
    ValueError
        Unknown split, or cell ids of the split manifest missing from the source.
    """
    import anndata as ad

    from cellrlhf.cell2text.vocab import GeneVocab
    from cellrlhf.data.config import DataBuildConfig
    from cellrlhf.data.schema import CONTROL_LABEL

    if split not in _SPLITS:
        raise ValueError(f"split={split!r}; choose one of {_SPLITS}.")
    dataset_dir = Path(dataset_dir)
    manifest, splits = _recorded(dataset_dir)
    config = DataBuildConfig.from_dict(manifest["config"])
    saved_vocab = GeneVocab.load(dataset_dir)
    with _open(config, data_dir, cache_dir) as source:
        _check_source(source, manifest, dataset_dir)
        rows, obs = _listed_cells(source, splits["cells"], config.schema, dataset_dir)
        wanted = list(splits["cells"][split])
        if include_controls:
            borrowed, replaced = _borrowed_controls(dataset_dir, split, obs, CONTROL_LABEL)
            wanted = [c for c in wanted if c not in replaced] + borrowed
        vocab, mapping = _checked_vocab(source, config.expression, saved_vocab, dataset_dir)
        wanted_rows = rows[obs.index.get_indexer(wanted)]
        X = _expression(source, wanted_rows, mapping, config.expression, progress, len(vocab))
    result = ad.AnnData(
        X=X,
        obs=obs.loc[wanted].copy(),
        var=pd.DataFrame(index=pd.Index(list(vocab.genes))),
    )
    result.uns[REAL_CELLS_KEY] = {
        "params": {
            "dataset_dir": str(dataset_dir),
            "fingerprint": manifest.get("fingerprint"),
            "split": split,
            "layer": config.expression.layer,
            "transform": config.expression.transform,
            "simulated": bool(manifest.get("simulated")),
            "include_controls": include_controls,
        }
    }
    logger.info("real %s cells of %s: %d cells", split, dataset_dir, result.n_obs)
    return result


def _recorded(dataset_dir: Path) -> tuple[dict, dict]:
    """``manifest.json`` and ``splits.json``, checked to record the data config and split cells."""
    from cellrlhf.data.layout import open_dataset_dir

    dataset = open_dataset_dir(dataset_dir)
    manifest, splits = dataset.manifest, dataset.splits
    if "config" not in manifest or "cells" not in splits:
        raise ValueError(
            f"{dataset_dir} does not record its data config and split cells (manifest 'config', "
            "splits 'cells'); rebuild it with this version of `cellrlhf data build`."
        )
    return manifest, splits


def _check_source(source, manifest: dict, dataset_dir: Path) -> None:
    """The source's checksum is the one the dataset was built from (when recorded)."""
    expected = (manifest.get("source") or {}).get("sha256")
    if expected and source.sha256 != expected:
        raise SourceChecksumError(
            f"the source found ({source.info.get('path') or source.info.get('name') or source.kind}) "
            f"has checksum {source.sha256}, but {dataset_dir} was built from data with "
            f"checksum {expected}. It is different data (or different simulator settings); "
            "point --data-dir at the original file or rebuild the dataset."
        )


def _listed_cells(source, cells: dict, schema, dataset_dir: Path):
    """The cells of every split (``cells``: split -> ids) in source order.

    Returns
    -------
    (rows, obs): their source positions, and their standardized ``obs`` with ``split``.
    """
    from cellrlhf.data.layout import SPLITS_FILENAME
    from cellrlhf.data.schema import standardize_obs

    labels_of = {cid: name for name, ids in cells.items() for cid in ids}
    index = pd.Index(source.obs.index.astype(str))
    listed = np.asarray(list(labels_of), dtype=object)
    positions = index.get_indexer(listed)
    if (positions < 0).any():
        missing = listed[positions < 0][:5].tolist()
        raise ValueError(
            f"{int((positions < 0).sum())} cell id(s) of {dataset_dir / SPLITS_FILENAME} are "
            f"not in the source, e.g. {missing}: the source differs from the one built from."
        )
    rows = positions[np.argsort(positions, kind="stable")]
    obs = standardize_obs(source.obs.iloc[rows], schema)
    obs["split"] = [labels_of[c] for c in obs.index]
    return rows, obs


def _checked_vocab(source, expression, saved_vocab, dataset_dir: Path):
    """The source's genes mapped onto the vocabulary, which must be the dataset's."""
    vocab, mapping = _vocab_mapping(source, expression)
    if list(vocab.genes) != list(saved_vocab.genes):
        raise SourceChecksumError(
            f"the source's genes differ from {dataset_dir}/gene_vocab.json; it is not the "
            "data the dataset was built from."
        )
    return vocab, mapping


def _borrowed_controls(
    dataset_dir: Path, split: str, obs: pd.DataFrame, control: str
) -> tuple[list, set]:
    """Control cells of other splits that serve ``split`` (training controls, usually), and the
    split's own control cells they replace: where the RL prompts record that their change was
    taken against another split's controls (validation prompts against the training controls,
    as test prompts are), the split's own few controls are left out, so that a validation
    evaluation measures change as its prompts and the test split do."""
    mine = obs[obs["split"] == split]
    contexts = sorted(set(mine["cell_context"]))
    recorded = _control_splits(dataset_dir, split, contexts)
    extra: list = []
    replaced: set = set()
    for ctx in contexts:
        own = (mine["cell_context"] == ctx) & (mine["perturbation"] == control)
        where = recorded[ctx] or (split if own.any() else "train")
        if where == split:
            continue
        if recorded[ctx]:
            replaced.update(mine.index[own])
        pick = (obs["split"] == where) & (obs["cell_context"] == ctx)
        extra += obs.index[pick & (obs["perturbation"] == control)].tolist()
    return extra, replaced
