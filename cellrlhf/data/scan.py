"""The single streaming pass over the selected cells' expression.

For every block of cells it writes the cells' sentences (those the plan needs are kept, the
pretraining corpus is appended to an Arrow stream file as it goes), adds the block to every
(split, perturbation, context) group's sums, and keeps the few expression rows needed later
(decoder fit cells, Wilcoxon samples). Memory is bounded by the block size plus what the plan
asked to keep, never by the number of cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellrlhf.data.expression import iter_expression_blocks
from cellrlhf.data.fingerprint import TableHasher
from cellrlhf.data.prompts import PromptWriter
from cellrlhf.metrics.pseudobulk import GroupAccumulator

__all__ = ["ScanPlan", "ScanResult", "scan_cells", "prefix_text", "cell_prefixes"]


def prefix_text(prefix: dict[str, str]) -> str:
    """``"cell_context: K562; perturbation: <pert> KLF1 </pert>;"`` ("" without columns)."""
    parts = []
    for column, value in prefix.items():
        if column == "perturbation":
            value = PromptWriter.perturbation_text(value)
        parts.append(f"{column}: {value};")
    return " ".join(parts)


def cell_prefixes(metadata: dict[str, np.ndarray], n: int) -> np.ndarray:
    """The metadata prefix of every cell (computed once per distinct value combination)."""
    if not metadata:
        return np.full(n, "", dtype=object)
    columns = list(metadata)
    index = pd.MultiIndex.from_arrays([np.asarray(metadata[c]).astype(str) for c in columns])
    codes, uniques = pd.factorize(index)
    texts = np.array(
        [prefix_text(dict(zip(columns, key, strict=True))) for key in uniques], dtype=object
    )
    return texts[codes]


@dataclass
class ScanPlan:
    """What the pass must produce, decided from metadata beforehand.

    Attributes
    ----------
    keep_sentence
        Per selected cell: keep its sentence (used by an SFT or RL row).
    pretrain_counts
        Per selected cell: how many times it enters the pretraining corpus (None = no corpus).
    decoder_cells
        Cells whose (transformed) expression the decoder is fitted on.
    wilcoxon_cells
        Cells whose expression the Wilcoxon test needs (None = Welch).
    pretrain_path
        Arrow stream file receiving the pretraining corpus.
    prefixes
        Per selected cell: the metadata prefix of its pretraining text ("" for none).
    wrap_cell
        Write pretraining sentences as ``<cell> ... </cell>``.
    """

    keep_sentence: np.ndarray
    pretrain_counts: np.ndarray | None
    decoder_cells: np.ndarray
    wilcoxon_cells: np.ndarray | None
    pretrain_path: Path | None
    prefixes: np.ndarray
    wrap_cell: bool = True


@dataclass
class ScanResult:
    """What the pass produced.

    Attributes
    ----------
    sentences
        Sentences of the cells the plan kept (cell position -> sentence).
    n_genes
        Genes in every selected cell's sentence.
    sums
        Per-group sums of the transformed expression.
    decoder_rows
        Transformed expression of ``plan.decoder_cells`` (in that order).
    wilcoxon_cells, wilcoxon_rows
        Transformed expression of ``plan.wilcoxon_cells`` (sorted cells, matching rows).
    pretrain_hash, pretrain_rows
        Content hash and row count of the pretraining corpus written.
    """

    sentences: dict[int, str]
    n_genes: np.ndarray
    sums: GroupAccumulator
    decoder_rows: sp.csr_matrix
    wilcoxon_cells: np.ndarray
    wilcoxon_rows: sp.csr_matrix
    pretrain_hash: str
    pretrain_rows: int

    def wilcoxon_matrix(self, cells: np.ndarray) -> sp.csr_matrix:
        """Rows of the kept Wilcoxon cells among ``cells``."""
        return self.wilcoxon_rows[np.flatnonzero(np.isin(self.wilcoxon_cells, cells))]


def scan_cells(
    matrix,
    rows: np.ndarray,
    cell_ids: np.ndarray,
    group_of_cell: np.ndarray,
    n_groups: int,
    *,
    mapping,
    sentence_writer,
    plan: ScanPlan,
    transform: str = "none",
    chunk_size: int = 4096,
    progress: bool = True,
    layer_name: str = "X",
) -> ScanResult:
    """Run the pass.

    Parameters
    ----------
    matrix
        The source expression matrix (cell2text ``ExpressionSource.matrix``).
    rows
        Sorted source rows of the selected cells.
    cell_ids
        Cell ids of the selected cells.
    group_of_cell
        Group index of every selected cell (-1: in no group).
    n_groups
        Number of groups.
    mapping
        :class:`~cellrlhf.cell2text.vocab.GeneMapping` onto the vocabulary.
    sentence_writer
        :class:`~cellrlhf.data.sentences.SentenceWriter`.
    plan
        What to keep and write.
    transform, chunk_size
        See :class:`~cellrlhf.data.config.ExpressionConfig`.
    progress
        Show a progress bar (cells).
    layer_name
        Named in errors about invalid values.
    """
    import pyarrow as pa
    from tqdm.auto import tqdm

    kept = _Kept(plan, len(cell_ids), n_groups, len(sentence_writer.vocab))
    corpus = _PretrainStream(plan.pretrain_path)
    bar = tqdm(total=len(cell_ids), unit="cell", desc="data build", disable=not progress)
    try:
        blocks = iter_expression_blocks(
            matrix,
            rows,
            mapping=mapping,
            transform=transform,
            chunk_size=chunk_size,
            layer_name=layer_name,
        )
        for block in blocks:
            cells = block.cells
            texts, lengths = sentence_writer.encode(
                block.ranked_values, cell_ids[cells], layer_name=layer_name
            )
            if isinstance(texts, pa.ChunkedArray):  # one block's text is far below 2 GiB
                texts = texts.combine_chunks()
            values = block.values()  # transformed once, vectorized
            kept.add(cells, texts, lengths, values, group_of_cell[cells])
            corpus.write(plan, cells, texts, lengths, cell_ids)
            bar.update(len(cells))
    finally:
        bar.close()
        corpus.close()
    return kept.result(corpus.hasher.hexdigest(), corpus.n_written)


class _Kept:
    """What the pass keeps of every block: sentences the plan needs, genes per cell, group
    sums, and the expression rows of decoder and Wilcoxon cells."""

    def __init__(self, plan: ScanPlan, n: int, n_groups: int, n_vocab: int):
        self.plan, self.n_vocab = plan, n_vocab
        self.n_genes = np.zeros(n, dtype=np.int32)
        self.sentences: dict[int, str] = {}
        self.sums = GroupAccumulator(n_groups, n_vocab)
        self.decoder_pos = np.full(n, -1, dtype=np.int64)
        self.decoder_pos[plan.decoder_cells] = np.arange(len(plan.decoder_cells))
        self.decoder_blocks: list[tuple[np.ndarray, sp.csr_matrix]] = []
        self.is_wilcoxon = np.zeros(n, dtype=bool)
        if plan.wilcoxon_cells is not None:
            self.is_wilcoxon[plan.wilcoxon_cells] = True
        self.wilcoxon_blocks: list[tuple[np.ndarray, sp.csr_matrix]] = []

    def add(self, cells: np.ndarray, texts, lengths, values, groups: np.ndarray) -> None:
        """One block: its cells (selected-cell indices), sentences, lengths, values, groups."""
        import pyarrow as pa

        self.n_genes[cells] = lengths
        self.sums.add(values, groups)
        local = np.flatnonzero(self.plan.keep_sentence[cells])
        if len(local):
            kept = texts.take(pa.array(local)).to_pylist()
            self.sentences.update(zip(cells[local].tolist(), kept, strict=True))
        local = np.flatnonzero(self.decoder_pos[cells] >= 0)
        if len(local):
            self.decoder_blocks.append((self.decoder_pos[cells[local]], values[local]))
        local = np.flatnonzero(self.is_wilcoxon[cells])
        if len(local):
            self.wilcoxon_blocks.append((cells[local], values[local]))

    def result(self, pretrain_hash: str, pretrain_rows: int) -> ScanResult:
        blocks, n_vocab = self.wilcoxon_blocks, self.n_vocab
        return ScanResult(
            sentences=self.sentences,
            n_genes=self.n_genes,
            sums=self.sums,
            decoder_rows=_ordered_rows(self.decoder_blocks, len(self.plan.decoder_cells), n_vocab),
            wilcoxon_cells=np.concatenate([c for c, _ in blocks])
            if blocks
            else np.zeros(0, dtype=np.int64),
            wilcoxon_rows=_ordered_rows([(np.arange(0), b) for _, b in blocks], None, n_vocab),
            pretrain_hash=pretrain_hash,
            pretrain_rows=pretrain_rows,
        )


class _PretrainStream:
    """The pretraining corpus appended to an Arrow stream file (none without a path), hashed
    as it is written."""

    def __init__(self, path: Path | None):
        import pyarrow as pa

        self.schema = pa.schema([("text", pa.string()), ("cell_id", pa.string())])
        self.hasher = TableHasher()
        self.n_written = 0
        self.sink = self.writer = None
        if path is not None:
            self.sink = pa.OSFile(str(path), "wb")
            self.writer = pa.ipc.new_stream(self.sink, self.schema)

    def write(self, plan: ScanPlan, cells, texts, lengths, cell_ids) -> None:
        if self.writer is None:
            return
        batch = _pretrain_batch(plan, cells, texts, lengths, cell_ids, self.schema)
        if batch is not None:
            self.writer.write_batch(batch)
            self.hasher.update(batch)
            self.n_written += batch.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.sink.close()


def _pretrain_batch(plan: ScanPlan, cells, texts, lengths, cell_ids, schema):
    """The block's pretraining rows (Arrow compute: no per-cell Python work).

    Cells whose sentence is empty (no expressed vocabulary gene) are left out.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    counts = np.where(np.asarray(lengths) > 0, plan.pretrain_counts[cells], 0)
    local = np.repeat(np.arange(len(cells)), counts)
    if len(local) == 0:
        return None
    take = pa.array(local)
    sentences = pc.take(texts, take)
    if plan.wrap_cell:
        wrapped = pc.binary_join_element_wise("<cell>", sentences, "</cell>", " ")
        empty = pc.equal(pc.utf8_length(sentences), 0)
        sentences = pc.if_else(empty, pa.scalar("<cell> </cell>"), wrapped)
    prefixes = pa.array(plan.prefixes[cells[local]], pa.string())
    with_prefix = pc.binary_join_element_wise(prefixes, sentences, " ")
    text = pc.if_else(pc.equal(pc.utf8_length(prefixes), 0), sentences, with_prefix)
    ids = pa.array(cell_ids[cells[local]].astype(str), pa.string())
    return pa.record_batch([pc.cast(text, pa.string()), ids], schema=schema)


def _ordered_rows(blocks, n_rows: int | None, n_vocab: int) -> sp.csr_matrix:
    """Stack kept rows; with ``n_rows``, put them at their planned positions."""
    if not blocks:
        return sp.csr_matrix((0 if n_rows is None else n_rows, n_vocab), dtype=np.float32)
    matrix = sp.vstack([b for _, b in blocks], format="csr")
    if n_rows is None:
        return matrix
    positions = np.concatenate([p for p, _ in blocks])
    order = np.empty(n_rows, dtype=np.int64)
    order[positions] = np.arange(len(positions))
    return matrix[order]
