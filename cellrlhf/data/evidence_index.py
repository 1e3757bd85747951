"""Everything needed to write the evidence block of ANY (perturbation, context), without cells.

An :class:`EvidenceIndex` holds the texts a build wrote from its training cells: for every
measured (perturbation, context) unit the ``{cell}`` value of its evidence lines (a profile
sentence or its change classes) and the groups it came from; for every context the
``average_response`` text of all its measured perturbations and, for each measured perturbation,
the text with that perturbation left out (training prompts leave their own perturbation out);
the evidence config and the phrases. :meth:`EvidenceIndex.block` composes the lines from these
texts. The build's :class:`~cellrlhf.data.evidence.EvidenceBuilder` composes every prompt's
block through the same method, so a block written at inference (``CellLM.predict_perturbation``,
the chat) equals the one a training prompt of the same (perturbation, context) showed, and a
combination nobody measured gets the lines of its measured components.

The data build saves the index as ``evidence_index.json`` in the dataset directory; model
directories carry a copy. For the ``neighbours`` kind the similarity comes from the user's gene
table: the index stores the table's path and sha256, and :meth:`EvidenceIndex.block` needs the
:class:`~cellrlhf.data.evidence_table.GeneTable`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cellrlhf.data.evidence_config import EvidenceConfig, EvidenceError
from cellrlhf.data.evidence_phrases import (
    EvidencePhrases,
    check_change_phrases,
    phrases_from_lines,
)
from cellrlhf.data.prompts import PromptWriter
from cellrlhf.data.schema import CONTROL_LABEL, TARGET_SEPARATOR, perturbation_targets

__all__ = [
    "EVIDENCE_INDEX_FORMAT",
    "EVIDENCE_INDEX_VERSION",
    "CONTEXT_KINDS",
    "MeasuredUnit",
    "AverageText",
    "EvidenceIndex",
    "pooled_keys",
]

EVIDENCE_INDEX_FORMAT = "cellrlhf.evidence_index"
EVIDENCE_INDEX_VERSION = 1
# evidence about the cell context, not the perturbation: the only kinds a control prompt shows
CONTEXT_KINDS = ("average_response",)
_REBUILD = "rebuild the dataset with `cellrlhf data build` (an `evidence:` section) to write it"


@dataclass(frozen=True)
class MeasuredUnit:
    """A measured (perturbation, context) unit: what its evidence lines show.

    Attributes
    ----------
    text
        The ``{cell}`` value of its lines, exactly as the build writes it (a profile sentence
        in ``<cell>`` markup, or the ``change`` phrase).
    splits
        The split of each group of cells it was computed from (one source per group).
    targets
        The perturbation's targets (its gene-table vector, ``neighbours``).
    """

    text: str
    splits: tuple[str, ...]
    targets: tuple[str, ...]


@dataclass(frozen=True)
class AverageText:
    """An ``average_response`` text and the number of perturbations ``n`` it averages."""

    text: str
    n: int


class EvidenceIndex:
    """The evidence texts of a build, to compose the evidence block of any prompt.

    Parameters
    ----------
    config
        The build's :class:`~cellrlhf.data.evidence_config.EvidenceConfig`.
    phrases
        The :class:`~cellrlhf.data.evidence_phrases.EvidencePhrases` the lines are written with.
    units
        ``(perturbation, context)`` -> :class:`MeasuredUnit`, for every measured unit.
    controls
        Context -> splits of its control groups (the reference of ``write: change``).
    averages
        Context -> :class:`AverageText` over all measured perturbations of the context
        (``average_response``; a perturbation not measured there sees this one).
    left_out
        ``(perturbation, context)`` -> :class:`AverageText` over the context's other measured
        perturbations, for every measured unit of a context with more than one.
    gene_table_path, gene_table_sha256
        The gene-similarity table of ``neighbours``, as the config gave it, and its digest.
    pooled
        ``(perturbation, contexts)`` -> the ``pool_other_contexts`` text of its mean change over
        ``contexts`` (sorted), for every set :func:`pooled_keys` names.
    sort_targets
        Whether the data wrote a combination's targets sorted (``schema.sort_targets``): how
        :meth:`label` writes a combination that was not measured.
    perturbation_text
        ``"A+B"`` -> ``"<pert> A B </pert>"`` (default
        :meth:`~cellrlhf.data.prompts.PromptWriter.perturbation_text`).

    Raises
    ------
    EvidenceError
        The parts do not fit together (a text missing for a measured unit, a count that differs
        from the measured perturbations, phrases that cannot write the config).
    """

    def __init__(
        self,
        config: EvidenceConfig,
        phrases: EvidencePhrases,
        units: Mapping[tuple[str, str], MeasuredUnit],
        controls: Mapping[str, Sequence[str]],
        averages: Mapping[str, AverageText],
        left_out: Mapping[tuple[str, str], AverageText],
        *,
        gene_table_path: str | None = None,
        gene_table_sha256: str | None = None,
        sort_targets: bool = True,
        perturbation_text: Callable[[str], str] | None = None,
        pooled: Mapping[tuple[str, tuple[str, ...]], str] | None = None,
    ):
        self.config = config
        self.phrases = phrases
        self.units = dict(units)
        self.controls = {c: tuple(s) for c, s in controls.items()}
        self.averages = dict(averages)
        self.left_out = dict(left_out)
        self.pooled = dict(pooled or {})
        self.gene_table_path = gene_table_path
        self.gene_table_sha256 = gene_table_sha256
        self.sort_targets = bool(sort_targets)
        self.perturbation_text = perturbation_text or PromptWriter.perturbation_text
        self._by_context: dict[str, list[str]] = {}
        self._by_pert: dict[str, list[str]] = {}
        for pert, context in sorted(self.units):
            self._by_context.setdefault(context, []).append(pert)
            self._by_pert.setdefault(pert, []).append(context)
        self._check()

    # ------------------------------------------------------------------ checks
    def _check(self) -> None:
        check_change_phrases(self.config, self.phrases)
        for (pert, context), unit in self.units.items():
            if pert == CONTROL_LABEL or not unit.splits:
                raise EvidenceError(
                    f"evidence index: unit ({pert!r}, {context!r}) is a control or has no "
                    f"groups; {_REBUILD} again."
                )
            if self.config.write == "change" and context not in self.controls:
                raise EvidenceError(
                    f"evidence index: write: change needs the control groups of {context!r}; "
                    f"{_REBUILD} again."
                )
        if self.config.pool_other_contexts:
            for pert, contexts in self._by_pert.items():
                missing = [k for k in pooled_keys(pert, contexts) if k not in self.pooled]
                if missing:
                    raise EvidenceError(
                        f"evidence index: no pooled other-contexts text of {missing[0]}; "
                        f"{_REBUILD} again."
                    )
        if "average_response" not in self.config.kinds:
            return
        for context, perts in self._by_context.items():
            wanted = [(self.averages.get(context), len(perts), f"context {context!r}")]
            if len(perts) > 1:
                wanted += [
                    (
                        self.left_out.get((p, context)),
                        len(perts) - 1,
                        f"{p!r} left out in {context!r}",
                    )
                    for p in perts
                ]
            for entry, n, what in wanted:
                if entry is None or entry.n != n:
                    found = "none" if entry is None else f"n={entry.n}"
                    raise EvidenceError(
                        f"evidence index: the average_response text of {what} should average "
                        f"{n} measured perturbations ({found} stored); {_REBUILD} again."
                    )

    # ------------------------------------------------------------------ lookups
    @property
    def contexts(self) -> list[str]:
        """Contexts with measured perturbations or training controls."""
        return sorted(set(self._by_context) | set(self.controls))

    def measured(self, context: str) -> list[str]:
        """The measured perturbations of ``context`` (sorted)."""
        return list(self._by_context.get(context, []))

    def label(self, targets: Sequence[str]) -> str:
        """The perturbation label of ``targets`` as the data wrote it.

        A measured perturbation with the same targets (any order, any case) gives its label;
        otherwise the targets are spelled as the data's measured targets and joined with ``+``,
        sorted when the data sorted combinations; no target is the control label.
        """
        if not targets:
            return CONTROL_LABEL
        wanted = frozenset(t.upper() for t in targets)
        for pert in self._by_pert:
            if frozenset(t.upper() for t in perturbation_targets(pert)) == wanted:
                return pert
        spelling = {t.upper(): t for unit in self.units.values() for t in unit.targets}
        spelled = [spelling.get(t.upper(), t) for t in targets]
        if self.sort_targets:
            spelled = sorted(spelled, key=str.upper)
        return TARGET_SEPARATOR.join(spelled)

    def context(self, context: str) -> str:
        """``context`` as the data spelled it (exact, else the one case-insensitive match);
        unchanged when the data has no such context (its evidence reads "not measured")."""
        known = self.contexts
        if context in known:
            return context
        matches = [c for c in known if c.lower() == str(context).lower()]
        return matches[0] if len(matches) == 1 else context

    def describe(self) -> str:
        """One line: kinds, writing, and what was measured."""
        n_contexts = len(self._by_context)
        return (
            f"kinds {list(self.config.kinds)}, write {self.config.write}, "
            f"{len(self.units)} measured (perturbation, context) units in {n_contexts} "
            f"context(s), phrases v{self.phrases.version}"
        )

    # ------------------------------------------------------------------ composing
    def block(self, perturbation: str, context: str, gene_table=None) -> tuple[str, list[dict]]:
        """The evidence text of a prompt about ``(perturbation, context)`` and its sources.

        Parameters
        ----------
        perturbation
            A standardized label (``"A"``, ``"A+B"``, :data:`~cellrlhf.data.schema.
            CONTROL_LABEL`; see :meth:`label`). A control prompt shows the context kinds only.
        context
            The cell context, as the data spells it (see :meth:`context`).
        gene_table
            The :class:`~cellrlhf.data.evidence_table.GeneTable` (``neighbours`` only).

        Returns
        -------
        ``(text, sources)``: the header and one line per item (``kinds`` order; missing
        evidence as "not measured" lines), and one ``{"kind", "split", "perturbation",
        "cell_context"}`` per group of cells used.

        Raises
        ------
        EvidenceError
            ``neighbours`` is a kind and no gene table is given.
        """
        kinds = self.config.kinds
        if perturbation == CONTROL_LABEL:
            kinds = tuple(k for k in kinds if k in CONTEXT_KINDS)
        if "neighbours" in kinds and gene_table is None:
            where = f"{self.gene_table_path} (sha256 {str(self.gene_table_sha256)[:12]}...)"
            raise EvidenceError(
                "evidence kind 'neighbours' needs the gene-similarity table the evidence was "
                f"built with, {where}: pass it as gene_table= (a path, or "
                "cellrlhf.data.evidence_table.load_gene_table(path))."
            )
        makers = {
            "average_response": self._average,
            "components": self._components,
            "other_contexts": self._other_contexts,
            "neighbours": lambda p, c: self._neighbours(p, c, gene_table),
        }
        lines = [self.phrases.line("header")]
        sources: list[dict] = []
        for kind in kinds:
            kind_lines, kind_sources = makers[kind](perturbation, context)
            lines += kind_lines
            sources += kind_sources
        return "\n".join(lines), sources

    def sources(self, kind: str, keys, *, controls: bool | None = None) -> list[dict]:
        """``evidence_sources`` entries of the measured ``(perturbation, context)`` ``keys``
        under ``kind``, with their contexts' training controls when ``controls`` (default:
        with ``write: change``, whose lines are taken against them)."""
        sources = [
            {"kind": kind, "split": split, "perturbation": p, "cell_context": c}
            for p, c in keys
            for split in self.units[(p, c)].splits
        ]
        if self.config.write == "change" if controls is None else controls:
            for context in dict.fromkeys(c for _, c in keys):
                sources += [
                    {"kind": kind, "split": split, "perturbation": CONTROL_LABEL,
                     "cell_context": context}
                    for split in self.controls[context]
                ]  # fmt: skip
        return sources

    def _average(self, perturbation: str, context: str):
        others = [p for p in self._by_context.get(context, []) if p != perturbation]
        if not others:
            return [self.phrases.line("average_response_missing", cell_context=context)], []
        key = (perturbation, context)
        entry = self.left_out[key] if key in self.units else self.averages[context]
        line = self.phrases.line(
            "average_response", cell_context=context, n=len(others), cell=entry.text
        )
        return [line], self.sources("average_response", [(p, context) for p in others])

    def _components(self, perturbation: str, context: str):
        targets = perturbation_targets(perturbation)
        if len(targets) < 2 and not self.config.components_of_singles:
            return [], []
        lines, keys = [], []
        for target in targets:
            text = self.perturbation_text(target)
            unit = self.units.get((target, context))
            if unit is not None:
                keys.append((target, context))
                lines.append(
                    self.phrases.line(
                        "component", perturbation=text, cell_context=context, cell=unit.text
                    )
                )
            else:
                lines.append(
                    self.phrases.line("component_missing", perturbation=text, cell_context=context)
                )
        return lines, self.sources("components", keys)

    def _other_contexts(self, perturbation: str, context: str):
        others = [c for c in self._by_pert.get(perturbation, []) if c != context]
        if not others:
            return [self.phrases.line("other_contexts_missing")], []
        keys = [(perturbation, c) for c in others]
        if self.config.pool_other_contexts:
            text = self.pooled[(perturbation, tuple(others))]
            lines = [self.phrases.line("other_contexts_pooled", n=len(others), cell=text)]
        else:
            lines = [
                self.phrases.line("other_context", other_context=c, cell=self.units[k].text)
                for c, k in zip(others, keys, strict=True)
            ]
        return lines, self.sources("other_contexts", keys)

    def _neighbours(self, perturbation: str, context: str, table):
        targets = perturbation_targets(perturbation)
        target_vector = table.vector(targets)
        if target_vector is None:
            reason = f"{' '.join(table.missing(targets))} not in the gene table"
            return [
                self.phrases.line("neighbours_missing", cell_context=context, reason=reason)
            ], []
        upper = {t.upper() for t in targets}
        scored = []
        for pert in self._by_context.get(context, []):
            candidate = list(self.units[(pert, context)].targets)
            if pert == perturbation or upper & {t.upper() for t in candidate}:
                continue
            vector = table.vector(candidate)
            if vector is not None:
                scored.append((-float(vector @ target_vector), pert))
        if not scored:
            reason = "no other measured perturbation of this context is in the gene table"
            return [
                self.phrases.line("neighbours_missing", cell_context=context, reason=reason)
            ], []
        chosen = sorted(scored)[: self.config.neighbours.k]
        lines = [
            self.phrases.line(
                "neighbour",
                perturbation=self.perturbation_text(pert),
                similarity=f"{-score:.2f}",
                cell_context=context,
                cell=self.units[(pert, context)].text,
            )
            for score, pert in chosen
        ]
        return lines, self.sources("neighbours", [(p, context) for _, p in chosen])

    # ------------------------------------------------------------------ files
    def to_json(self) -> dict:
        """The index as plain data (``format``, ``version`` and every text; see :meth:`save`)."""
        gene_table = None
        if self.gene_table_path is not None or self.gene_table_sha256 is not None:
            gene_table = {"path": self.gene_table_path, "sha256": self.gene_table_sha256}
        averages = [
            {"cell_context": c, "left_out": "", "n": a.n, "text": a.text}
            for c, a in sorted(self.averages.items())
        ] + [
            {"cell_context": c, "left_out": p, "n": a.n, "text": a.text}
            for (p, c), a in sorted(self.left_out.items())
        ]
        out = {
            "format": EVIDENCE_INDEX_FORMAT,
            "version": EVIDENCE_INDEX_VERSION,
            "config": json.loads(json.dumps(asdict(self.config))),
            "phrases": {
                "version": self.phrases.version,
                "sha256": self.phrases.sha256,
                "lines": dict(self.phrases.lines),
            },
            "gene_table": gene_table,
            "sort_targets": self.sort_targets,
            "units": [
                {
                    "perturbation": p,
                    "cell_context": c,
                    "targets": list(u.targets),
                    "splits": list(u.splits),
                    "text": u.text,
                }
                for (p, c), u in sorted(self.units.items())
            ],  # fmt: skip
            "controls": {c: list(s) for c, s in sorted(self.controls.items())},
            "average_response": averages,
        }
        if self.pooled:  # pool_other_contexts only: other indexes stay byte for byte as before
            out["other_contexts_pooled"] = [
                {"perturbation": p, "cell_contexts": list(cs), "text": t}
                for (p, cs), t in sorted(self.pooled.items())
            ]
        return out

    @classmethod
    def from_json(cls, payload, *, where: str = "evidence index") -> EvidenceIndex:
        """Read :meth:`to_json`'s data.

        Raises
        ------
        EvidenceError
            Not an evidence index, a newer version, or a missing or malformed entry (named).
        """
        if not isinstance(payload, Mapping) or payload.get("format") != EVIDENCE_INDEX_FORMAT:
            raise EvidenceError(
                f"{where} is not an evidence index (expected a JSON object with format "
                f"{EVIDENCE_INDEX_FORMAT!r}); {_REBUILD}."
            )
        version = payload.get("version")
        if not isinstance(version, int) or not 1 <= version <= EVIDENCE_INDEX_VERSION:
            raise EvidenceError(
                f"{where} has version {version!r}; this cellrlhf reads version "
                f"{EVIDENCE_INDEX_VERSION}: upgrade cellrlhf, or {_REBUILD} with this one."
            )
        missing = [
            k
            for k in ("config", "phrases", "units", "controls", "average_response")
            if k not in payload
        ]
        if missing:
            raise EvidenceError(f"{where} lacks {missing}; {_REBUILD} again.")
        try:
            return cls._parse(payload, where)
        except EvidenceError as err:
            raise EvidenceError(f"{where}: {err}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise EvidenceError(
                f"{where} is malformed ({type(err).__name__}: {err}); {_REBUILD} again."
            ) from None

    @classmethod
    def _parse(cls, payload: Mapping, where: str) -> EvidenceIndex:
        phrases = payload["phrases"]
        units = {
            (str(u["perturbation"]), str(u["cell_context"])): MeasuredUnit(
                _text(u["text"]), _strings(u["splits"]), _strings(u["targets"])
            )
            for u in payload["units"]
        }
        averages, left_out = {}, {}
        for a in payload["average_response"]:
            entry = AverageText(_text(a["text"]), int(a["n"]))
            if a["left_out"]:
                left_out[(str(a["left_out"]), str(a["cell_context"]))] = entry
            else:
                averages[str(a["cell_context"])] = entry
        gene_table = payload.get("gene_table") or {}
        return cls(
            EvidenceConfig.from_dict(payload["config"]),
            phrases_from_lines(
                phrases["lines"], version=phrases["version"], sha256=phrases["sha256"], where=where
            ),
            units,
            {str(c): _strings(s) for c, s in payload["controls"].items()},
            averages,
            left_out,
            gene_table_path=gene_table.get("path"),
            gene_table_sha256=gene_table.get("sha256"),
            sort_targets=bool(payload.get("sort_targets", True)),
            pooled={
                (str(e["perturbation"]), _strings(e["cell_contexts"])): _text(e["text"])
                for e in payload.get("other_contexts_pooled", [])
            },
        )

    def save(self, path: str | Path) -> Path:
        """Write the index as JSON to ``path`` (a file)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> EvidenceIndex:
        """Read an index written by :meth:`save`.

        Raises
        ------
        EvidenceError
            No such file, not JSON, or not a (complete) evidence index.
        """
        path = Path(path)
        if not path.is_file():
            raise EvidenceError(f"no evidence index at {path}; {_REBUILD}.")
        try:
            payload = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise EvidenceError(f"{path} is not valid JSON ({err}); {_REBUILD} again.") from None
        return cls.from_json(payload, where=str(path))


def pooled_keys(perturbation: str, contexts) -> list[tuple[str, tuple[str, ...]]]:
    """The ``(perturbation, contexts)`` sets a ``pool_other_contexts`` prompt can ask for: the
    measured ``contexts`` without each one (a prompt in that context) and all of them (a prompt
    in another), each sorted; never an empty set."""
    contexts = sorted(set(contexts))
    sets = {tuple(c for c in contexts if c != left) for left in contexts} | {tuple(contexts)}
    return sorted((perturbation, s) for s in sets if s)


def _text(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a text, got {type(value).__name__}")
    return value


def _strings(values) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"expected a list of texts, got {type(values).__name__}")
    return tuple(_text(v) for v in values)
