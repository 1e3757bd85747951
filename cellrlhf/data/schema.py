"""The standard perturbation schema, and the mapping from a data set's own ``obs`` columns to it.

Every builder reads five standard columns, whatever the source called them:

``perturbation``
    Target names joined by ``+`` (``"KLF1"``, ``"CEBPA+KLF1"``), or exactly one control label,
    :data:`CONTROL_LABEL`. Targets of a combination are sorted so ``A+B`` and ``B+A`` are one
    perturbation.
``cell_context``
    Cell type or cell line.
``perturbation_type``
    One of :data:`PERTURBATION_TYPES` (CRISPRa, CRISPRi, knockout, drug, ...).
``dose``
    Free text (``"1"``, ``"1+1"``, ``"10 uM"``), ``""`` when unknown.
``batch``
    Batch, library or source data set.

How a source's columns map onto these is declared in the data config (:class:`SchemaMapping`),
never in code. :func:`standardize_obs` applies a mapping and validates the result; problems raise
:class:`SchemaError` naming the column, the offending values and the fix.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "CONTROL_LABEL",
    "SCHEMA_COLUMNS",
    "PERTURBATION_TYPES",
    "SchemaError",
    "ColumnSource",
    "SchemaMapping",
    "standardize_obs",
    "validate_perturbation_obs",
    "perturbation_targets",
]

logger = logging.getLogger(__name__)

CONTROL_LABEL = "control"
SCHEMA_COLUMNS = ("perturbation", "cell_context", "perturbation_type", "dose", "batch")
TARGET_SEPARATOR = "+"

# canonical spelling -> accepted spellings (compared case-insensitively, '-'/'_'/' ' ignored)
PERTURBATION_TYPES: dict[str, tuple[str, ...]] = {
    "CRISPRa": ("crispra", "activation", "crispr_activation"),
    "CRISPRi": ("crispri", "interference", "crispr_interference", "knockdown"),
    "knockout": ("knockout", "ko", "crispr", "crisprko", "crispr_ko", "cas9"),
    "overexpression": ("overexpression", "orf", "oe"),
    "RNAi": ("rnai", "shrna", "sirna"),
    "drug": ("drug", "compound", "chemical", "small_molecule"),
    "cytokine": ("cytokine", "ligand", "stimulation", "signaling"),
    "none": ("none", "unperturbed", "na"),
    "other": ("other",),
}

# labels that usually mean "control"; one found among the perturbation values without being
# declared as a control value is an error (two control labels would split the control group)
_CONTROL_LOOKALIKES = {
    "control",
    "ctrl",
    "ctl",
    "non-targeting",
    "nontargeting",
    "non_targeting",
    "nt",
    "safe-targeting",
    "scrambled",
    "dmso",
    "vehicle",
    "unperturbed",
    "untreated",
    "wt",
    "wildtype",
    "mock",
    "none",
    "negative_control",
    "negctrl",
}


class SchemaError(ValueError):
    """The cell metadata cannot be mapped onto the perturbation schema."""


@dataclass(frozen=True)
class ColumnSource:
    """Where one standard column comes from: an ``obs`` column or a constant value.

    In YAML either ``cell_context: cell_type`` (a column) or ``batch: {value: run1}`` (a constant).
    """

    column: str | None = None
    value: str | None = None

    def __post_init__(self) -> None:
        if (self.column is None) == (self.value is None):
            raise SchemaError("a schema column needs exactly one of 'column' or 'value'.")

    @classmethod
    def parse(cls, spec: object, name: str) -> ColumnSource:
        """Read ``"obs_column"``, ``{"column": ...}`` or ``{"value": ...}``."""
        if isinstance(spec, str):
            return cls(column=spec)
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"column", "value"}
            if unknown or len(spec) != 1:
                raise SchemaError(
                    f"schema column {name!r}: give an obs column name or {{value: <constant>}}, "
                    f"got {dict(spec)!r}."
                )
            if "column" in spec:
                return cls(column=str(spec["column"]))
            return cls(value="" if spec["value"] is None else str(spec["value"]))
        raise SchemaError(
            f"schema column {name!r}: give an obs column name or {{value: <constant>}}, got {spec!r}."
        )

    def describe(self) -> str:
        return f"obs[{self.column!r}]" if self.column is not None else f"constant {self.value!r}"


@dataclass(frozen=True)
class SchemaMapping:
    """How a source's ``obs`` maps onto the standard schema (declared in the data config).

    Parameters
    ----------
    columns
        Standard column -> :class:`ColumnSource`. ``perturbation`` and ``cell_context`` are
        required; ``perturbation_type``, ``dose`` and ``batch`` default to ``"other"``, ``""``
        and ``""`` when absent.
    control_values
        The source's label(s) for unperturbed cells; all become :data:`CONTROL_LABEL`.
    target_separator
        How the source joins the targets of a combination (``"+"``, ``"_"``, ``","``).
    ignore_targets
        Target names dropped from combinations (e.g. ``"ctrl"`` in GEARS-style ``"KLF1+ctrl"``).
    sort_targets
        Sort the targets of a combination (``B+A`` -> ``A+B``) so one combination has one name.
    """

    columns: Mapping[str, ColumnSource]
    control_values: tuple[str, ...] = (CONTROL_LABEL,)
    target_separator: str = TARGET_SEPARATOR
    ignore_targets: tuple[str, ...] = ()
    sort_targets: bool = True
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: Mapping) -> SchemaMapping:
        """Parse the ``schema:`` section of a data config."""
        known = {
            "columns",
            "control_values",
            "target_separator",
            "ignore_targets",
            "sort_targets",
            "extra",
        }
        unknown = set(spec) - known
        if unknown:
            raise SchemaError(
                f"unknown key(s) {sorted(unknown)} in 'schema'; known: {sorted(known)}."
            )
        cols = spec.get("columns") or {}
        bad = set(cols) - set(SCHEMA_COLUMNS)
        if bad:
            raise SchemaError(
                f"schema.columns has unknown standard column(s) {sorted(bad)}; the standard "
                f"columns are {list(SCHEMA_COLUMNS)} (put other columns under schema.extra)."
            )
        columns = {name: ColumnSource.parse(cols[name], name) for name in cols}
        controls = spec.get("control_values", [CONTROL_LABEL])
        if isinstance(controls, str):
            controls = [controls]
        return cls(
            columns=columns,
            control_values=tuple(str(c) for c in controls),
            target_separator=str(spec.get("target_separator", TARGET_SEPARATOR)),
            ignore_targets=tuple(str(t) for t in spec.get("ignore_targets", ())),
            sort_targets=bool(spec.get("sort_targets", True)),
            extra=dict(spec.get("extra") or {}),
        )

    def to_dict(self) -> dict:
        return {
            "columns": {
                k: (v.column if v.column is not None else {"value": v.value})
                for k, v in self.columns.items()
            },
            "control_values": list(self.control_values),
            "target_separator": self.target_separator,
            "ignore_targets": list(self.ignore_targets),
            "sort_targets": self.sort_targets,
            "extra": dict(self.extra),
        }


def _norm_token(text: str) -> str:
    return re.sub(r"[\s\-_]+", "_", text.strip().lower())


_TYPE_LOOKUP = {
    _norm_token(alias): canonical
    for canonical, aliases in PERTURBATION_TYPES.items()
    for alias in (*aliases, canonical)
}


def _column_values(obs: pd.DataFrame, source: ColumnSource, name: str) -> pd.Series:
    if source.value is not None:
        return pd.Series(source.value, index=obs.index, dtype=object)
    if source.column not in obs.columns:
        raise SchemaError(
            f"schema column {name!r} maps to obs[{source.column!r}], which does not exist. "
            f"Available obs columns: {list(obs.columns)}. Fix schema.columns.{name} in the data "
            "config (or use {value: <constant>})."
        )
    values = obs[source.column]
    missing = values.isna().to_numpy()
    if missing.any():
        rows = list(obs.index[missing][:5])
        raise SchemaError(
            f"obs[{source.column!r}] (schema column {name!r}) has {int(missing.sum())} missing "
            f"value(s), e.g. cells {rows}. Fill them or drop those cells (source.obs_query)."
        )
    codes, uniques = pd.factorize(values, sort=False)  # strip each distinct value once
    stripped = np.array([str(u).strip() for u in uniques], dtype=object)
    return pd.Series(stripped[codes], index=obs.index, dtype=object)


def _standard_perturbations(values: pd.Series, mapping: SchemaMapping, source: str) -> pd.Series:
    controls = {c.strip() for c in mapping.control_values}
    ignore = {t.upper() for t in mapping.ignore_targets}
    sep = mapping.target_separator
    out: dict[str, str] = {}
    problems: list[str] = []
    for raw in pd.unique(values.to_numpy()):
        raw = str(raw)
        if raw in controls:
            out[raw] = CONTROL_LABEL
            continue
        targets = [t.strip() for t in raw.split(sep)] if sep else [raw]
        targets = [t for t in targets if t and t.upper() not in ignore]
        if not targets:
            problems.append(f"{raw!r} has no target left (empty or only ignored targets)")
            continue
        if any(_norm_token(t) in _CONTROL_LOOKALIKES or t in controls for t in targets):
            if len(targets) == 1:
                problems.append(
                    f"{raw!r} looks like a control label but is not declared in "
                    f"schema.control_values {sorted(controls)}"
                )
            else:
                problems.append(
                    f"{raw!r} combines a control label with targets; list the control label in "
                    "schema.ignore_targets to drop it from combinations"
                )
            continue
        spaced = [t for t in targets if any(ch.isspace() for ch in t)]
        if spaced:
            problems.append(f"{raw!r} has target names with whitespace {spaced}")
            continue
        upper = [t.upper() for t in targets]
        if len(set(upper)) != len(upper):
            problems.append(f"{raw!r} names the same target twice")
            continue
        if mapping.sort_targets:
            targets = sorted(targets, key=str.upper)
        out[raw] = TARGET_SEPARATOR.join(targets)
    if problems:
        raise SchemaError(
            f"{len(problems)} perturbation label(s) in {source} do not fit the schema: "
            + "; ".join(problems[:8])
            + ("; ..." if len(problems) > 8 else "")
            + ". Declare control labels in schema.control_values, the combination separator in "
            "schema.target_separator, and labels to drop from combinations in schema.ignore_targets."
        )
    return values.map(out).astype(object)


def _standard_types(values: pd.Series, source: str) -> pd.Series:
    out: dict[str, str] = {}
    unknown: list[str] = []
    for raw in pd.unique(values.to_numpy()):
        canonical = _TYPE_LOOKUP.get(_norm_token(str(raw)))
        if canonical is None:
            unknown.append(str(raw))
        else:
            out[str(raw)] = canonical
    if unknown:
        raise SchemaError(
            f"unknown perturbation type(s) {unknown} in {source}; known types: "
            f"{list(PERTURBATION_TYPES)} (with aliases such as 'knockdown' -> CRISPRi). "
            "Rename them, or map perturbation_type to a constant such as {value: other}."
        )
    return values.map(out).astype(object)


def standardize_obs(
    obs: pd.DataFrame, mapping: SchemaMapping, *, require_control: bool = False
) -> pd.DataFrame:
    """Map a source ``obs`` onto the standard schema and validate it.

    Parameters
    ----------
    obs
        The source cell metadata (``adata.obs``); it is not modified.
    mapping
        The declared column mapping.
    require_control
        Require control cells in every context with perturbed cells (see
        :func:`validate_perturbation_obs`).

    Returns
    -------
    A new DataFrame with the same index and the columns :data:`SCHEMA_COLUMNS` (all ``str``),
    followed by ``mapping.extra`` columns under their new names.

    Raises
    ------
    SchemaError
        Missing columns, missing values, undeclared or mixed control labels, malformed
        combinations, unknown perturbation types, duplicate cell names.
    """
    for required in ("perturbation", "cell_context"):
        if required not in mapping.columns:
            raise SchemaError(
                f"schema.columns.{required} is required: name the obs column with the "
                f"{required.replace('_', ' ')} (or a constant, {{value: ...}}). Available obs "
                f"columns: {list(obs.columns)}."
            )
    if not obs.index.is_unique:
        dup = obs.index[obs.index.duplicated()].unique()[:5].tolist()
        raise SchemaError(
            f"cell names (obs_names) repeat, e.g. {dup}; cell ids identify cells in splits and "
            "datasets. Call adata.obs_names_make_unique() first."
        )
    defaults = {
        "perturbation_type": ColumnSource(value="other"),
        "dose": ColumnSource(value=""),
        "batch": ColumnSource(value=""),
    }
    result = pd.DataFrame(index=obs.index.astype(str))
    for name in SCHEMA_COLUMNS:
        source = mapping.columns.get(name, defaults.get(name))
        values = _column_values(obs, source, name)
        if name == "perturbation":
            values = _standard_perturbations(values, mapping, source.describe())
        elif name == "perturbation_type":
            values = _standard_types(values, source.describe())
        elif name == "cell_context":
            empty = (values == "").to_numpy()
            if empty.any():
                raise SchemaError(
                    f"{source.describe()} (cell_context) is empty for {int(empty.sum())} cell(s), "
                    f"e.g. {list(obs.index[empty][:5])}."
                )
        result[name] = values.to_numpy(dtype=object)
    for new_name, column in mapping.extra.items():
        if new_name in result.columns:
            raise SchemaError(f"schema.extra column {new_name!r} clashes with a standard column.")
        result[new_name] = _column_values(obs, ColumnSource(column=column), new_name).to_numpy(
            dtype=object
        )
    validate_perturbation_obs(result, require_control=require_control)
    return result


def validate_perturbation_obs(obs: pd.DataFrame, *, require_control: bool = False) -> None:
    """Check that ``obs`` already follows the standard schema.

    Parameters
    ----------
    obs
        Standardized metadata (from :func:`standardize_obs`).
    require_control
        Also require control cells in every cell context that has perturbed cells (needed by
        perturbation-response tasks, differential expression and RL references).
    """
    missing = [c for c in SCHEMA_COLUMNS if c not in obs.columns]
    if missing:
        raise SchemaError(
            f"obs lacks standard column(s) {missing}; map the source columns with standardize_obs."
        )
    for column in SCHEMA_COLUMNS:
        values = obs[column]
        if values.isna().any():
            raise SchemaError(f"standard column {column!r} has missing values.")
    perts = obs["perturbation"].astype(str)
    bad = [p for p in pd.unique(perts) if p != CONTROL_LABEL and "" in p.split(TARGET_SEPARATOR)]
    if bad:
        raise SchemaError(f"perturbation labels with empty targets: {bad[:5]}.")
    types = set(pd.unique(obs["perturbation_type"].astype(str)))
    unknown = types - set(PERTURBATION_TYPES)
    if unknown:
        raise SchemaError(
            f"perturbation_type values {sorted(unknown)} are not standard types "
            f"{list(PERTURBATION_TYPES)}."
        )
    if require_control:
        control = perts.to_numpy() == CONTROL_LABEL
        contexts = obs["cell_context"].astype(str).to_numpy()
        perturbed_ctx = set(np.unique(contexts[~control]))
        control_ctx = set(np.unique(contexts[control]))
        lacking = sorted(perturbed_ctx - control_ctx)
        if lacking:
            raise SchemaError(
                f"cell context(s) {lacking} have perturbed cells but no control cells "
                f"(perturbation == {CONTROL_LABEL!r}); perturbation responses are measured "
                "against controls of the same context. Check schema.control_values, or drop "
                "those contexts with source.obs_query."
            )


def perturbation_targets(perturbation: str) -> list[str]:
    """Targets of a standardized label (``"A+B"`` -> ``["A", "B"]``, control -> ``[]``)."""
    if perturbation == CONTROL_LABEL:
        return []
    return [t for t in perturbation.split(TARGET_SEPARATOR) if t]
