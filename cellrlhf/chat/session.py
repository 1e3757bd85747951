"""State and commands of an interactive chat about cells (shared by the terminal and web apps).

A :class:`ChatSession` holds a :class:`~cellrlhf.chat.cell_lm.CellLM`, optionally an AnnData to
pick cells from, the selected cell, the conversation, and the last prediction (to save). The
first question after a cell is selected carries the cell; later questions continue the
conversation. Selecting another cell starts a new conversation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SelectedCell",
    "CellSelectionError",
    "ChatSession",
    "MAX_SAMPLES",
    "MAX_GENERATED",
    "check_count",
]

logger = logging.getLogger(__name__)

MAX_SAMPLES = 16  # predicted cells per /perturb (the web app's slider stops here too)
MAX_GENERATED = 1000  # cells per /generate


def check_count(name: str, value: int, maximum: int) -> None:
    """Raise ``ValueError`` unless ``1 <= value <= maximum`` (samples, cells to generate)."""
    if not 1 <= int(value) <= maximum:
        raise ValueError(
            f"{name}={value} is out of range: give 1..{maximum} (the chat apps' limit; for more, "
            "call CellLM from Python in a script)."
        )


class CellSelectionError(LookupError):
    """A cell that is not in the data, or an index out of range."""


@dataclass(frozen=True)
class SelectedCell:
    """The cell the conversation is about."""

    cell_id: str
    sentence: str
    index: int | None = None  # row in the AnnData, if it came from one

    @property
    def n_genes(self) -> int:
        return len(self.sentence.split())

    def preview(self, n: int = 10) -> str:
        words = self.sentence.split()
        more = f" ... (+{len(words) - n})" if len(words) > n else ""
        return " ".join(words[:n]) + more


class ChatSession:
    """One user's conversation with a model about cells.

    Parameters
    ----------
    lm
        The model.
    adata
        Cells to pick from (optional).
    layer
        Layer of ``adata`` holding expression (default ``X``).
    gene_symbols
        ``var`` column with gene symbols, when ``var_names`` are not symbols.
    evidence, gene_table
        The measured evidence of perturbation predictions (``CellLM.predict_perturbation``'s
        ``evidence`` and ``gene_table``): ``None`` the model's own, ``False`` none, an
        :class:`~cellrlhf.data.evidence_index.EvidenceIndex` or a dataset directory.
    """

    def __init__(
        self,
        lm,
        adata=None,
        *,
        layer: str | None = None,
        gene_symbols: str | None = None,
        evidence=None,
        gene_table=None,
    ):
        if adata is not None and layer is not None and layer not in adata.layers:
            raise KeyError(
                f"layer {layer!r} is not in the data; layers: {list(adata.layers.keys()) or 'none'}."
            )
        self.lm = lm
        self.adata = adata
        self.layer = layer
        self.gene_symbols = gene_symbols
        self.evidence = evidence
        self.gene_table = gene_table
        self.cell: SelectedCell | None = None
        self.messages: list[dict] = []
        self.last_result = None  # AnnData of the last prediction / generation
        self.last_prediction = None

    # ------------------------------------------------------------------ cells
    def find_cell(self, key: str | int) -> int:
        """Row of the cell named ``key`` (an obs name, else a 0-based index)."""
        if self.adata is None:
            raise CellSelectionError("no data loaded: start with --adata FILE.h5ad, or use /genes.")
        names = self.adata.obs_names
        text = str(key).strip()
        if text in names:
            return int(names.get_loc(text))
        try:
            index = int(text)
        except ValueError:
            raise CellSelectionError(
                f"no cell named {text!r} in the data ({self.adata.n_obs} cells, e.g. "
                f"{', '.join(map(str, names[:3]))}); give an obs name or an index "
                f"0..{self.adata.n_obs - 1}."
            ) from None
        if not 0 <= index < self.adata.n_obs:
            raise CellSelectionError(
                f"cell index {index} is out of range: the data has {self.adata.n_obs} cells "
                f"(0..{self.adata.n_obs - 1})."
            )
        return index

    def select_cell(self, key: str | int) -> SelectedCell:
        """Select a cell of the data by obs name or index (starts a new conversation)."""
        index = self.find_cell(key)
        row = self.adata[index : index + 1]
        encoded = self.lm.encode(row, layer=self.layer, gene_symbols=self.gene_symbols)
        return self._set_cell(SelectedCell(str(row.obs_names[0]), encoded.sentences[0], index))

    def select_genes(self, genes: list[str] | str) -> SelectedCell:
        """Select a cell given as genes, highest expressed first (``/genes CD3E CD8A ...``)."""
        encoded = self.lm.encode(genes if isinstance(genes, str) else list(genes))
        return self._set_cell(SelectedCell("typed cell", encoded.sentences[0]))

    def _set_cell(self, cell: SelectedCell) -> SelectedCell:
        if not cell.sentence:
            raise CellSelectionError(
                f"cell {cell.cell_id} expresses none of the model's genes; pick another cell."
            )
        self.cell = cell
        self.messages = []
        return cell

    def clear(self) -> None:
        """Forget the conversation (the cell stays selected)."""
        self.messages = []

    # ------------------------------------------------------------------ asking
    def ask(self, question: str, *, stream: bool = True, **generation) -> Iterator[str]:
        """Answer ``question`` (about the selected cell, if any); yields text pieces.

        The question and the complete answer are appended to the conversation once the answer
        is finished (a cancelled answer leaves the conversation as it was). Closing markup with
        no opening tag is dropped from the text shown (:class:`~cellrlhf.chat.prompts.
        MarkupTidier`); the conversation keeps the model's own words. A question about "this
        cell" with no cell selected raises ``ValueError`` saying a cell is needed.
        """
        from cellrlhf.chat.prompts import MarkupTidier, mentions_a_cell

        question = question.strip()
        if not question:
            raise ValueError("empty question.")
        if self.cell is None and mentions_a_cell(question):
            raise ValueError(
                "this question is about a cell, but no cell is selected: /cell INDEX_OR_NAME "
                "picks one of the data's cells (a control cell for a perturbation question), "
                "/genes G1 G2 ... types one; /perturb TARGETS then predicts its response."
            )
        if not self.messages:
            sentence = self.cell.sentence if self.cell is not None else None
            content = self.lm.prompts.question(sentence, question)[-1]["content"]
        else:
            content = question
        conversation = [*self.messages, {"role": "user", "content": content}]
        pieces: list[str] = []
        tidier = MarkupTidier()  # stray closing tags are not shown to the user
        if stream:
            for piece in self.lm.chat(conversation, stream=True, **generation):
                pieces.append(piece)
                yield tidier.feed(piece)
        else:
            pieces.append(self.lm.chat(conversation, **generation))
            yield tidier.feed(pieces[0])
        self.messages = [*conversation, {"role": "assistant", "content": "".join(pieces)}]

    def annotate(self):
        """Cell type of the selected cell: a one-row DataFrame."""
        return self.lm.annotate(self._require_cell().sentence)

    def predict(self, perturbation: str, **kwargs):
        """Predicted response of the selected cell to ``perturbation`` (kept for saving), with
        the session's evidence unless ``evidence=`` is given."""
        cell = self._require_cell()
        check_count("samples", kwargs.get("n_samples", 1), MAX_SAMPLES)
        kwargs.setdefault("evidence", self.evidence)
        kwargs.setdefault("gene_table", self.gene_table)
        prediction = self.lm.predict_perturbation(cell.sentence, perturbation, **kwargs)
        adata = prediction.adata
        adata.obs["input_cell"] = cell.cell_id
        adata.obs_names = [n.replace("cell_0", cell.cell_id, 1) for n in adata.obs_names]
        self.last_prediction = prediction
        self.last_result = prediction.adata
        return prediction

    def generate(self, cell_type: str, n: int = 1, **kwargs):
        """Generate ``n`` cells of ``cell_type`` (kept for saving; at most
        :data:`MAX_GENERATED`)."""
        check_count("N", n, MAX_GENERATED)
        adata = self.lm.generate_cells(cell_type, n, **kwargs)
        self.last_result = adata
        return adata

    def save(self, path: str | Path) -> Path:
        """Write the last prediction or generation as ``.h5ad``."""
        if self.last_result is None:
            raise ValueError("nothing to save yet: run /perturb or /generate first.")
        path = Path(path).expanduser()
        if path.suffix != ".h5ad":
            raise ValueError(f"{path}: predictions are saved as AnnData; use a .h5ad file name.")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.last_result.write_h5ad(path)
        return path

    def _require_cell(self) -> SelectedCell:
        if self.cell is None:
            raise CellSelectionError(
                "no cell selected: use /cell INDEX_OR_NAME or /genes G1 G2 ..."
            )
        return self.cell
