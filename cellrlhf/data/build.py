"""Build every training-ready dataset of a data config in one streaming pass.

Steps: open the source -> standardize ``obs`` to the perturbation schema -> split -> plan every
row from metadata -> one pass over the expression (:mod:`~cellrlhf.data.scan`) -> fit the
decoder on training cells -> DE tests and references -> SFT and RL rows -> save -> check
leakage on the saved files -> manifest. The output appears only when everything succeeded.

Everything is seeded: the same source and config give the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellrlhf.data.config import DataBuildConfig
from cellrlhf.data.evidence import EvidenceBuilder, evidence_features, load_evidence_phrases
from cellrlhf.data.evidence_table import load_gene_table
from cellrlhf.data.input_checks import check_transform_fits, drop_empty_cells
from cellrlhf.data.layout import (
    EVIDENCE_INDEX_FILENAME,
    MANIFEST_FILENAME,
    SPLITS_FILENAME,
    DatasetDir,
    pretrain_features,
    rl_features,
    sft_features,
)
from cellrlhf.data.leakage import check_no_leakage
from cellrlhf.data.loading import DataSource, open_source
from cellrlhf.data.manifest import make_manifest
from cellrlhf.data.output import (
    OutputError,
    datasets_progress,
    finish_staging,
    prepare_staging,
    save_dataset,
    save_dataset_dict,
)
from cellrlhf.data.plan import (
    CellTable,
    GroupIndex,
    plan_decoder_cells,
    plan_pretrain,
    plan_rl,
    plan_sft,
    task_rng,
)
from cellrlhf.data.prompts import PromptWriter
from cellrlhf.data.references import References
from cellrlhf.data.rows import rl_rows, sft_rows
from cellrlhf.data.scan import ScanPlan, cell_prefixes, scan_cells
from cellrlhf.data.schema import CONTROL_LABEL, standardize_obs
from cellrlhf.data.sentences import SentenceWriter
from cellrlhf.data.splits import make_splits
from cellrlhf.data.synthetic import SyntheticCombinations, SyntheticTransfers
from cellrlhf.data.task_templates import TASKS, load_phrases, load_task_templates

__all__ = ["BuildError", "BuildResult", "build_datasets"]

logger = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """The datasets cannot be built from this source and config."""


@dataclass
class BuildResult:
    """What a build produced.

    Attributes
    ----------
    path
        The output directory.
    manifest
        The written ``manifest.json``.
    timings
        Seconds spent in each step.
    """

    path: Path
    manifest: dict
    timings: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]


@dataclass
class _Prepared:
    """Everything decided before the pass."""

    source: DataSource
    rows: np.ndarray
    table: CellTable
    groups: GroupIndex
    assignment: object
    vocab: object
    mapping: object
    pretrain_rows: np.ndarray | None
    sft_specs: list
    rl_specs: list
    rl_skipped: list
    decoder_cells: np.ndarray
    wilcoxon_cells: np.ndarray | None
    n_empty_dropped: int = 0
    gene_table: object | None = None


def _selected_rows(source: DataSource, query: str | None) -> np.ndarray:
    if not query:
        return np.arange(source.n_obs, dtype=np.int64)
    try:
        mask = source.obs.eval(query)
    except Exception as err:
        raise BuildError(
            f"source.obs_query {query!r} failed on obs (columns {list(source.obs.columns)}): {err}"
        ) from err
    rows = np.flatnonzero(np.asarray(mask, dtype=bool))
    if len(rows) == 0:
        raise BuildError(f"source.obs_query {query!r} selects no cells.")
    return rows.astype(np.int64)


def _vocab_and_mapping(source: DataSource, expression):
    from cellrlhf.cell2text.vocab import GeneVocab

    if expression.gene_symbols is None:
        names, where = list(source.var.index), "var_names"
    else:
        if expression.gene_symbols not in source.var.columns:
            raise BuildError(
                f"expression.gene_symbols={expression.gene_symbols!r} is not a var column; "
                f"available: {list(source.var.columns)}."
            )
        names = list(source.var[expression.gene_symbols])
        where = f"var[{expression.gene_symbols!r}]"
    return GeneVocab.from_names_with_mapping(names, where, duplicates=expression.duplicates)


def _wilcoxon_cells(config, groups: GroupIndex, sft_specs, rl_specs) -> np.ndarray:
    pairs = {(s.group, s.control_group) for s in sft_specs if s.task == "perturbation_effect"}
    pairs |= {(s.group, s.control_group) for s in rl_specs}
    cap = config.de.max_cells_per_group
    rng = task_rng(config.seed, "wilcoxon")
    picks = []
    for group in sorted({g for pair in pairs for g in pair}):
        members = np.flatnonzero(groups.of_cell == group)
        if len(members) > cap:
            members = np.sort(rng.choice(members, size=cap, replace=False))
        picks.append(members)
    return np.unique(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def _prepare(config: DataBuildConfig, source: DataSource) -> _Prepared:
    neighbours = config.evidence.neighbours
    gene_table = (  # read before the pass, so that a bad table fails fast
        load_gene_table(neighbours.table) if "neighbours" in config.evidence.kinds else None
    )
    if source.simulated:
        logger.warning(
            "source of %r is SIMULATED data; the datasets are marked simulated.", config.name
        )
    rows = _selected_rows(source, config.source.obs_query)
    expression = source.expression
    check_transform_fits(expression.matrix, config.expression.transform, expression.layer_name)
    rows, n_empty = drop_empty_cells(expression.matrix, rows, expression.layer_name)
    if len(rows) == 0:
        raise BuildError("every selected cell has no expressed gene: nothing to build from.")
    needs_control = config.rl.enabled or any(
        task.enabled for name, task in config.sft.tasks.items() if name.startswith("perturbation_")
    )
    obs = standardize_obs(source.obs.iloc[rows], config.schema, require_control=needs_control)
    has_perturbed = bool((obs["perturbation"] != CONTROL_LABEL).any())
    if config.pretrain.enabled:
        missing = [c for c in config.pretrain.metadata_prefix if c not in obs.columns]
        if missing:
            raise BuildError(
                f"pretrain.metadata_prefix names {missing}, which are neither standard nor "
                f"schema.extra columns ({list(obs.columns)})."
            )
    vocab, mapping = _vocab_and_mapping(source, config.expression)
    assignment = make_splits(obs, config.split)
    table = CellTable(obs, assignment.labels)
    groups = GroupIndex.build(table)
    seed = config.seed
    pretrain_rows = plan_pretrain(config.pretrain, table, seed) if config.pretrain.enabled else None
    sft_specs = plan_sft(config, table, groups, seed) if config.sft.enabled else []
    rl_specs, rl_skipped = (
        plan_rl(
            config,
            table,
            groups,
            seed,
            validation_perturbations=assignment.validation_perturbations,
            validation_pairs=assignment.validation_pairs,
        )
        if config.rl.enabled
        else ([], [])
    )
    if config.rl.enabled and has_perturbed and not any(s.split == "test" for s in rl_specs):
        logger.warning("no RL test prompt: every test group was skipped (%s).", rl_skipped[:3])
    held_validation = assignment.validation_perturbations or assignment.validation_pairs
    if held_validation and not any(s.split == "validation" for s in rl_specs):
        logger.warning(
            "no RL validation prompt: every validation perturbation's group was skipped (%s); "
            "the RL stage will select its policy on test.",
            [s for s in rl_skipped if s["split"] == "validation"][:3],
        )
    decoder_cells = plan_decoder_cells(table, config.decoder.max_cells, seed)
    if len(decoder_cells) == 0:
        raise BuildError("the training split has no cells to fit the expression decoder on.")
    wilcoxon = (
        _wilcoxon_cells(config, groups, sft_specs, rl_specs)
        if config.de.method == "wilcoxon"
        else None
    )
    return _Prepared(
        source,
        rows,
        table,
        groups,
        assignment,
        vocab,
        mapping,
        pretrain_rows,
        sft_specs,
        rl_specs,
        rl_skipped,
        decoder_cells,
        wilcoxon,
        n_empty,
        gene_table,
    )


def _scan_plan(config: DataBuildConfig, prep: _Prepared, staging: Path) -> ScanPlan:
    table = prep.table
    keep = np.zeros(len(table), dtype=bool)
    for spec in prep.sft_specs:
        for cell in (spec.cell, spec.control_cell):
            if cell >= 0:
                keep[cell] = True
    for spec in prep.rl_specs:
        keep[spec.reference_cells] = True
        keep[spec.control_cells] = True
        if spec.prompt_control_cell >= 0:
            keep[spec.prompt_control_cell] = True
    pretrain = prep.pretrain_rows
    return ScanPlan(
        keep_sentence=keep,
        pretrain_counts=None if pretrain is None else np.bincount(pretrain, minlength=len(table)),
        decoder_cells=prep.decoder_cells,
        wilcoxon_cells=prep.wilcoxon_cells,
        pretrain_path=None if pretrain is None else staging / "pretrain.arrow",
        prefixes=cell_prefixes(
            {c: table.obs[c].to_numpy(dtype=object) for c in config.pretrain.metadata_prefix},
            len(table),
        ),
        wrap_cell=config.pretrain.wrap_cell,
    )


def _fit_decoder(config: DataBuildConfig, prep: _Prepared, decoder_rows):
    import anndata as ad
    import pandas as pd

    from cellrlhf.cell2text.decoder import ExpressionDecoder

    fit_data = ad.AnnData(
        X=decoder_rows,
        obs=pd.DataFrame(index=pd.Index(prep.table.cell_ids[prep.decoder_cells].astype(str))),
        var=pd.DataFrame(index=pd.Index(prep.vocab.genes)),
    )
    decoder = ExpressionDecoder.fit(
        fit_data,
        top_k=config.sentences.top_k,
        seed=config.sentences.seed,
        method=config.decoder.method,
        shrinkage=config.decoder.shrinkage,
        n_neighbors=config.decoder.n_neighbors,
        reference_cells=config.decoder.reference_cells,
    )
    decoder.params.update(
        fitted_on="training split cells only",
        expression_layer=config.expression.layer,
        expression_transform=config.expression.transform,
    )
    return decoder


@dataclass
class _Rows:
    """The SFT and RL rows of a build, with the decoder, templates and evidence that wrote them."""

    decoder: object
    templates: dict
    phrases: object
    sft: dict
    rl: dict
    sft_features: object
    rl_features: object
    evidence: EvidenceBuilder | None = None
    evidence_phrases: object | None = None
    synthetic: dict | None = None  # option -> what it made (manifest)


def _scan(staging: Path, config: DataBuildConfig, prep: _Prepared, sentence_writer):
    """The one pass over the expression: the scan plan and what the scan gathered."""
    plan = _scan_plan(config, prep, staging)
    expression = prep.source.expression
    scan = scan_cells(
        expression.matrix,
        prep.rows,
        prep.table.cell_ids,
        prep.groups.of_cell,
        len(prep.groups.keys),
        mapping=prep.mapping,
        sentence_writer=sentence_writer,
        plan=plan,
        transform=config.expression.transform,
        chunk_size=config.expression.chunk_size,
        progress=config.progress,
        layer_name=expression.layer_name,
    )
    return plan, scan


def _make_rows(config: DataBuildConfig, prep: _Prepared, scan, sentence_writer) -> _Rows:
    """Fit the decoder, then write the SFT and RL rows (with evidence when configured)."""
    decoder = _fit_decoder(config, prep, scan.decoder_rows)
    references = References(
        scan, prep.groups, prep.vocab, config.de, sentence_writer, config.sentences, decoder
    )
    templates = {task: load_task_templates(task, config.sft.templates_dir) for task in TASKS}
    phrases = load_phrases(config.sft.templates_dir)
    writer = PromptWriter(templates, phrases, config.sft.context_noun)
    evidence = evidence_phrases = None
    sft_feats, rl_feats = sft_features(), rl_features()
    if config.evidence.enabled:
        evidence_phrases = load_evidence_phrases(config.sft.templates_dir)
        evidence = EvidenceBuilder(
            config.evidence,
            references,
            evidence_phrases,
            writer.perturbation_text,
            prep.gene_table,
            sort_targets=config.schema.sort_targets,
        )
        sft_feats["evidence_sources"] = rl_feats["evidence_sources"] = evidence_features()
    sft = sft_rows(prep.sft_specs, prep.table, references, writer, config.seed, evidence)
    rl = rl_rows(prep.rl_specs, prep.table, references, writer, config.seed, evidence)
    synthetic = {}
    for option, maker_class in (
        ("synthetic_combinations", SyntheticCombinations),
        ("synthetic_transfers", SyntheticTransfers),
    ):
        if getattr(config.evidence, option):
            from datasets import Value

            maker = maker_class(
                evidence, prep.table, references, prep.decoder_cells, scan.decoder_rows,
                sentence_writer,
            )  # fmt: skip
            synthetic[option] = _add_synthetic(config, maker, writer, sft)
            sft_feats["synthetic"] = Value("bool")
    return _Rows(
        decoder,
        templates,
        phrases,
        sft,
        rl,
        sft_feats,
        rl_feats,
        evidence,
        evidence_phrases,
        synthetic,
    )


def _add_synthetic(config: DataBuildConfig, maker, writer, sft: dict) -> dict:
    """``evidence.synthetic_*`` rows into SFT train (:mod:`~cellrlhf.data.synthetic`)."""
    task = config.sft.tasks.get("perturbation_response")
    if not config.sft.enabled or task is None or not task.enabled:
        raise BuildError(
            f"evidence.{maker.option} adds perturbation_response examples: enable "
            f"sft.tasks.perturbation_response (or set {maker.option}: 0)."
        )
    try:
        n = getattr(config.evidence, maker.option)
        return maker.add_to(sft, n, config.seed, writer, task.context)
    except ValueError as err:
        raise BuildError(str(err)) from err


def _save_pretrain(staging: Path, plan, output, parquet: Path | None) -> None:
    """Move the scan's pretraining corpus into ``staging/pretrain`` (and Parquet)."""
    from datasets import Dataset

    pretrain = Dataset.from_file(str(plan.pretrain_path))
    if pretrain.features != pretrain_features():
        raise BuildError(f"pretrain features {pretrain.features} differ from the layout.")
    save_dataset(pretrain, staging / "pretrain", max_shard_size=output.max_shard_size)
    if parquet is not None:
        (parquet / "pretrain").mkdir(parents=True, exist_ok=True)
        pretrain.to_parquet(str(parquet / "pretrain" / "train.parquet"))
    del pretrain
    plan.pretrain_path.unlink()


def _save_parts(staging: Path, config: DataBuildConfig, plan, scan, rows: _Rows):
    """Save the pretrain, SFT and RL parts; returns their content hashes and row counts."""
    output = config.output
    parquet = staging / "parquet" if output.parquet else None
    part_hashes: dict[str, object] = {}
    counts: dict[str, object] = {}
    if plan.pretrain_path is not None:
        _save_pretrain(staging, plan, output, parquet)
        part_hashes["pretrain"] = scan.pretrain_hash
        counts["pretrain"] = scan.pretrain_rows
    for part, enabled, data, features in (
        ("sft", config.sft.enabled, rows.sft, rows.sft_features),
        ("rl", config.rl.enabled, rows.rl, rows.rl_features),
    ):
        if not enabled:
            continue
        part_hashes[part] = save_dataset_dict(
            data,
            features,
            staging / part,
            max_shard_size=output.max_shard_size,
            parquet_dir=parquet / part if parquet else None,
        )
        counts[part] = {split: len(split_rows) for split, split_rows in data.items()}
        if part == "sft":
            counts["sft_tasks"] = {split: _task_counts(r) for split, r in data.items()}
    return part_hashes, counts


def _evidence_manifest(
    config: DataBuildConfig, prep: _Prepared, rows: _Rows, staging: Path
) -> dict:
    index = staging / EVIDENCE_INDEX_FILENAME
    return {
        "index_file": EVIDENCE_INDEX_FILENAME,
        "index_sha256": hashlib.sha256(index.read_bytes()).hexdigest(),
        "kinds": list(config.evidence.kinds),
        "phrases_version": rows.evidence_phrases.version,
        "phrases_sha256": rows.evidence_phrases.sha256,
        "gene_table_sha256": getattr(prep.gene_table, "sha256", None),
        "source_splits": list(EvidenceBuilder.SOURCE_SPLITS),
    }


def _build_into(staging: Path, config: DataBuildConfig, prep: _Prepared, timings: dict) -> dict:
    """Scan, write rows, save every part, check leakage on the saved files; the manifest."""
    sentence_writer = SentenceWriter(
        prep.vocab, top_k=config.sentences.top_k, seed=config.sentences.seed
    )
    t0 = time.perf_counter()
    plan, scan = _scan(staging, config, prep, sentence_writer)
    timings["scan_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows = _make_rows(config, prep, scan, sentence_writer)
    timings["rows_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    part_hashes, counts = _save_parts(staging, config, plan, scan, rows)
    prep.vocab.save(staging)
    rows.decoder.save(staging)
    if rows.evidence is not None:  # the texts of every evidence block, for inference
        rows.evidence.index.save(staging / EVIDENCE_INDEX_FILENAME)
    splits_payload = prep.assignment.to_dict(prep.table.cell_ids, prep.table.obs)
    # compact JSON: with indentation the encoder is pure Python (slow on 10^5-10^6 cell ids)
    (staging / SPLITS_FILENAME).write_text(json.dumps(splits_payload))
    timings["write_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    leakage = check_no_leakage(DatasetDir(staging, {}))  # the manifest comes after the check
    timings["leakage_s"] = time.perf_counter() - t0
    manifest = make_manifest(
        config=config,
        source=prep.source,
        vocab=prep.vocab,
        decoder=rows.decoder,
        assignment=prep.assignment,
        table=prep.table,
        templates=rows.templates,
        phrases=rows.phrases,
        part_hashes=part_hashes,
        counts=counts,
        splits_payload=splits_payload,
        leakage=leakage,
        n_genes=scan.n_genes,
        rl_skipped=prep.rl_skipped,
    )
    manifest["source"]["n_cells_dropped_no_expression"] = prep.n_empty_dropped
    if config.rl.enabled:
        manifest["answer_budget"] = _answer_budget(config, rows.rl)
    if rows.evidence is not None:
        manifest["evidence"] = _evidence_manifest(config, prep, rows, staging)
        manifest["evidence"].update(rows.synthetic)
    (staging / MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=1))
    return manifest


def _answer_budget(config: DataBuildConfig, rl: dict) -> dict:
    """The RL answer budget the training cells need (gene tokens), checked against the plan."""
    from cellrlhf.cell2text.answer_budget import check_answer_budget, gene_token_lengths

    words = [len(s.split()) for row in rl.get("train", []) for s in row["reference_sentences"]]
    if not words:
        return {}
    lengths = gene_token_lengths(words)
    planned = config.rl.answer_budget
    check = check_answer_budget(
        lengths, planned or 0, max_cut=1.0 if planned is None else 0.01, where="data build"
    )
    logger.info("RL answers need up to %d tokens with gene tokens (99%%)", check.fits_budget)
    return {**check.to_dict(), "budget": planned, "estimate": "gene tokens: genes + 4"}


def _task_counts(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row["task"]] = out.get(row["task"], 0) + 1
    return dict(sorted(out.items()))


def build_datasets(
    config: DataBuildConfig,
    *,
    out_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    adata=None,
) -> BuildResult:
    """Build the pretraining corpus, instruction tasks and RL prompt sets of ``config``.

    Parameters
    ----------
    config
        The data-build config (:func:`~cellrlhf.data.config.load_config`).
    out_dir
        Output directory (default ``config.output.dir``).
    data_dir, cache_dir
        Where registered data sets are looked up (``$CELLRLHF_DATA_DIR`` is searched too).
    adata
        Use this in-memory AnnData instead of the configured source.

    Returns
    -------
    :class:`BuildResult` with the output path, manifest and timings.

    Raises
    ------
    SchemaError, SplitError, ConfigError, BuildError, LeakageError
        With a message naming the problem and the fix.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out_dir if out_dir is not None else config.output.dir)
    with open_source(
        config.source,
        data_dir=data_dir,
        cache_dir=cache_dir,
        adata=adata,
        layer=config.expression.layer,
    ) as source:
        prep = _prepare(config, source)
        timings["prepare_s"] = time.perf_counter() - started
        try:
            staging = prepare_staging(out, config.output.overwrite)
        except OutputError as err:
            raise BuildError(str(err)) from err
        try:
            with datasets_progress(config.progress):
                manifest = _build_into(staging, config, prep, timings)
            finish_staging(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    timings["total_s"] = time.perf_counter() - started
    logger.info("built %s in %.1f s: %s", out, timings["total_s"], manifest["counts"])
    return BuildResult(out, manifest, timings)
