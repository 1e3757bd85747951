"""The measured-evidence block of a perturbation query, written as training prompts showed it.

A model trained on a data build with an ``evidence:`` section saw every perturbation prompt
(``perturbation_response``, ``perturbation_effect``) start with a block of measured evidence
(:mod:`cellrlhf.data.evidence`). Its model directory carries the build's
:class:`~cellrlhf.data.evidence_index.EvidenceIndex` (``evidence_index.json``), and
:class:`ModelEvidence` puts the same block before the user text of a query
(:func:`~cellrlhf.data.evidence.with_evidence`): the block of a measured perturbation equals its
training prompts' (its own cells left out), and one nobody measured gets the explicit "not
measured" lines, or the lines of its measured components.

The ``evidence`` argument of ``CellLM.predict_perturbation`` / ``perturbation_effect``:
``None`` the model's index (none when it was trained without evidence), ``False`` no block, an
:class:`~cellrlhf.data.evidence_index.EvidenceIndex` or a dataset directory (or a model
directory, or an ``evidence_index.json``) to use that evidence, e.g. your own measurements.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from cellrlhf.data.evidence import with_evidence
from cellrlhf.data.evidence_config import EvidenceError
from cellrlhf.data.evidence_index import EvidenceIndex
from cellrlhf.data.layout import EVIDENCE_INDEX_FILENAME, MANIFEST_FILENAME

__all__ = ["ModelEvidence", "QueryEvidence", "load_model_evidence", "read_evidence"]

logger = logging.getLogger(__name__)


def load_model_evidence(model_dir: str | Path | None) -> EvidenceIndex | None:
    """The evidence index of a model directory (``evidence_index.json``), ``None`` without one.

    Raises
    ------
    EvidenceError
        The file is there but is not a readable evidence index.
    """
    if model_dir is None:
        return None
    path = Path(model_dir) / EVIDENCE_INDEX_FILENAME
    return EvidenceIndex.load(path) if path.is_file() else None


def read_evidence(evidence) -> EvidenceIndex:
    """An :class:`EvidenceIndex` from an index, a dataset / model directory or an index file.

    Raises
    ------
    EvidenceError
        Anything else, or a directory without evidence (the message names the fix).
    """
    if isinstance(evidence, EvidenceIndex):
        return evidence
    if not isinstance(evidence, str | Path):
        raise EvidenceError(
            "evidence= takes None (the model's own evidence), False (no evidence block), an "
            "EvidenceIndex, or a dataset directory built with an `evidence:` section; got "
            f"{type(evidence).__name__}."
        )
    path = Path(evidence).expanduser()
    if path.is_dir():
        if (path / MANIFEST_FILENAME).is_file():
            from cellrlhf.data.layout import open_dataset_dir

            index = open_dataset_dir(path).evidence_index()
            if index is None:
                raise EvidenceError(
                    f"dataset {path} was built without evidence (no {EVIDENCE_INDEX_FILENAME}): "
                    "build it with an `evidence:` section (docs/evidence.md), or pass "
                    "evidence=False."
                )
            return index
        path = path / EVIDENCE_INDEX_FILENAME
    if not path.is_file():
        raise EvidenceError(
            f"no evidence at {evidence}: pass a dataset directory built with an `evidence:` "
            f"section, a model directory trained on one, or its {EVIDENCE_INDEX_FILENAME}."
        )
    return EvidenceIndex.load(path)


class QueryEvidence:
    """The evidence of one query: an index, its gene table, and where it came from.

    Parameters
    ----------
    index
        The :class:`EvidenceIndex`.
    gene_table
        The :class:`~cellrlhf.data.evidence_table.GeneTable` (``neighbours`` only).
    origin
        Where the evidence came from (logged, and recorded with a prediction).
    """

    def __init__(self, index: EvidenceIndex, gene_table, origin: str):
        self.index = index
        self.gene_table = gene_table
        self.origin = origin
        self._texts: dict[tuple[str, str], str] = {}
        self._unknown_contexts: set[str] = set()

    def block(self, targets: Sequence[str], cell_context: str) -> str:
        """The evidence text of a prompt about ``targets`` (``[]``: control) in
        ``cell_context``, exactly as a training prompt of that (perturbation, context)."""
        index = self.index
        key = (index.label(targets), index.context(cell_context))
        if key[1] not in index.contexts and key[1] not in self._unknown_contexts:
            self._unknown_contexts.add(key[1])
            logger.warning(
                "cell context %r has no measurements in the evidence (%s): its evidence lines "
                "read 'not measured'. Measured contexts: %s.",
                cell_context,
                self.origin,
                ", ".join(index.contexts[:12]),
            )
        if key not in self._texts:
            self._texts[key] = index.block(*key, gene_table=self.gene_table)[0]
        return self._texts[key]

    def messages(
        self, conversation: list[dict], targets: Sequence[str], cell_context: str
    ) -> list[dict]:
        """``conversation`` with the evidence block before its user text."""
        return with_evidence(conversation, self.block(targets, cell_context))


class ModelEvidence:
    """The evidence a model's prompts carry, and the choice of evidence for each query.

    Parameters
    ----------
    index
        The model directory's :class:`EvidenceIndex` (``None``: none).
    data_manifest
        The model's ``data_manifest.json`` (its ``evidence`` section says the training
        prompts carried evidence).
    where
        The model directory (for messages).
    """

    def __init__(self, index: EvidenceIndex | None, data_manifest: Mapping, where: str = ""):
        self.index = index
        recorded = data_manifest.get("evidence") if isinstance(data_manifest, Mapping) else None
        self.recorded = dict(recorded) if isinstance(recorded, Mapping) else {}
        self.where = where or "the model directory"
        self._said: set[str] = set()
        self.default = None  # what a query without ``evidence=`` uses (:meth:`set_default`)
        self.default_gene_table = None

    def set_default(self, evidence=None, gene_table=None) -> None:
        """The evidence of queries that pass none (``cellrlhf chat / serve --evidence``):
        ``None`` the model's own, ``False`` none, an index or a directory (checked now, so a
        bad one fails at start)."""
        self.choose(evidence, gene_table)
        self.default, self.default_gene_table = evidence, gene_table

    @property
    def trained_with_evidence(self) -> bool:
        """Whether the model's training prompts carried evidence blocks."""
        return self.index is not None or bool(self.recorded)

    def _once(self, level: int, key: str, message: str, *args) -> None:
        if key not in self._said:
            self._said.add(key)
            logger.log(level, message, *args)

    def choose(self, evidence=None, gene_table=None) -> QueryEvidence | None:
        """The evidence of a query (``None``: no block).

        Parameters
        ----------
        evidence
            ``None``: the default (:meth:`set_default`; unless set, the model's own index, no
            block when it has none); ``False``: no block;
            an :class:`EvidenceIndex`, or a dataset / model directory or index file to read one
            from (:func:`read_evidence`).
        gene_table
            The gene-similarity table of ``neighbours`` evidence: a
            :class:`~cellrlhf.data.evidence_table.GeneTable` or its path. Default: the table
            the index was built with, when its recorded path still holds it.

        Raises
        ------
        EvidenceError
            An unreadable ``evidence``, or a bad gene table.
        """
        if evidence is None:
            evidence, gene_table = self.default, gene_table or self.default_gene_table
        if evidence is False:
            self._once(logging.INFO, "off", "evidence=False: prompts carry no evidence block.")
            return None
        if evidence is None:
            if self.index is None:
                if self.trained_with_evidence:
                    self._once(
                        logging.WARNING,
                        "missing",
                        "the model was trained on prompts with measured evidence (kinds %s), "
                        "but %s has no %s: its prompts lack the block, unlike training. Pass "
                        "evidence=<the dataset directory it was trained on>.",
                        self.recorded.get("kinds"),
                        self.where,
                        EVIDENCE_INDEX_FILENAME,
                    )
                return None
            index, origin = self.index, f"the model's {EVIDENCE_INDEX_FILENAME}"
        else:
            index = read_evidence(evidence)
            origin = "the given EvidenceIndex" if evidence is index else str(evidence)
            self._check_given(index, origin)
        table = self._gene_table(index, gene_table, origin)
        self._once(
            logging.INFO,
            f"use:{origin}",
            "measured evidence in the prompts: %s (%s)",
            origin,
            index.describe(),
        )
        return QueryEvidence(index, table, origin)

    def _check_given(self, index: EvidenceIndex, origin: str) -> None:
        """Warn when the given evidence is not what the model's training prompts showed."""
        if not self.trained_with_evidence:
            self._once(
                logging.WARNING,
                f"untrained:{origin}",
                "the model was trained without evidence blocks: it never saw one, and prompts "
                "with evidence (%s) are out of its training distribution.",
                origin,
            )
            return
        kinds = list(self.recorded.get("kinds") or (self.index.config.kinds if self.index else []))
        sha = self.recorded.get("phrases_sha256") or (
            self.index.phrases.sha256 if self.index else None
        )
        if kinds != list(index.config.kinds) or (sha and sha != index.phrases.sha256):
            self._once(
                logging.WARNING,
                f"differs:{origin}",
                "the evidence of %s (kinds %s) is written unlike the model's training prompts "
                "(kinds %s%s): the model reads blocks it was not trained on.",
                origin,
                list(index.config.kinds),
                kinds,
                ", other phrases" if sha and sha != index.phrases.sha256 else "",
            )

    def _gene_table(self, index: EvidenceIndex, given, origin: str):
        """The gene table of ``neighbours``: the given one, else the recorded path's."""
        if "neighbours" not in index.config.kinds:
            return None
        from cellrlhf.data.evidence_table import load_gene_table

        if given is None:
            path = index.gene_table_path
            if path and Path(path).is_file():
                table = load_gene_table(path)
                if table.sha256 == index.gene_table_sha256:
                    return table
            return None  # EvidenceIndex.block says how to give it
        table = load_gene_table(given) if isinstance(given, str | Path) else given
        if index.gene_table_sha256 and table.sha256 != index.gene_table_sha256:
            self._once(
                logging.WARNING,
                f"table:{origin}",
                "the gene table given (sha256 %s...) is not the one the evidence of %s was "
                "built with (sha256 %s...): neighbours may differ from training prompts.",
                str(table.sha256)[:12],
                origin,
                str(index.gene_table_sha256)[:12],
            )
        return table
