"""``cellrlhf data init my.h5ad``: inspect a user's own AnnData and write a commented data config.

The inspection guesses what a data config needs - which ``obs`` column holds the perturbation
and which of its labels mean control, the cell context, a perturbation type column, dose and
batch, whether the values are raw counts or already log-normalized (or scaled, unusable for
ranks), how many genes a cell expresses, and a gene symbol column when ``var_names`` are
Ensembl IDs - and :func:`render_config` writes them as YAML with a comment on every guess and
the choices left to the user. Data with one cell context get the annotation task turned off
(there is nothing to tell apart); data without control labels are treated as unperturbed cells
(cell tasks only).

::

    cellrlhf data init my.h5ad --out my_data.yaml
    cellrlhf data build --config my_data.yaml
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cellrlhf.data.schema import _CONTROL_LOOKALIKES, SchemaError, _norm_token, _standard_types

__all__ = ["ColumnGuess", "ExpressionGuess", "DataInspection", "inspect_h5ad", "render_config"]
__all__ += ["InitOptions", "inspect_adata", "run_init", "write_data_config"]

_SAMPLE_CELLS = 500
_CONTROL_WORDS = {"control", "ctrl", "dmso", "vehicle", "nontargeting", "untreated", "mock"}
_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}")
# name patterns in order of preference (first match wins among columns that qualify)
_PERTURBATION_NAMES = ("perturbation", "target", "guide", "gene", "condition", "treatment", "drug")
_CONTEXT_NAMES = ("cell_line", "cellline", "cell_type", "celltype", "label", "annotation")
_CONTEXT_NAMES += ("cluster", "leiden", "louvain", "patient", "donor")
_DOSE_NAMES = ("dose", "dosage", "concentration")
_BATCH_NAMES = ("batch", "gem_group", "library", "sample", "dataset", "donor", "patient", "plate")
_SYMBOL_COLUMNS = ("gene_symbol", "gene_symbols", "symbol", "gene_name", "feature_name")
_SYMBOL_COLUMNS += ("gene_names", "gene_short_name", "name")


@dataclass(frozen=True)
class ColumnGuess:
    """A guessed ``obs`` column (``None``: no column fits) and the alternatives seen."""

    column: str | None
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExpressionGuess:
    """What the expression values look like, on a sample of cells.

    Attributes
    ----------
    use_raw, layer
        Where the values are read (``adata.raw`` when ``X`` is scaled and ``.raw`` exists).
    transform
        ``"log1p_cp10k"`` for counts, ``"none"`` for values that are already log-normalized.
    kind
        ``"counts"``, ``"log"``, ``"normalized"`` (non-integer, large) or ``"scaled"`` (negative).
    max_value, median_genes
        Largest sampled value; median expressed genes per sampled cell.
    gene_symbols, duplicates
        ``var`` column with symbols (for Ensembl ``var_names``) and how repeated symbols merge.
    """

    use_raw: bool
    layer: str | None
    transform: str
    kind: str
    max_value: float
    median_genes: float
    gene_symbols: str | None = None
    duplicates: str = "error"


@dataclass
class DataInspection:
    """Everything :func:`inspect_h5ad` found in a file."""

    path: Path
    n_cells: int
    n_genes: int
    perturbation: ColumnGuess
    control_values: list[str]
    target_separator: str
    cell_context: ColumnGuess
    contexts: list[str]
    perturbation_type: ColumnGuess
    type_constant: str
    dose: ColumnGuess
    batch: ColumnGuess
    expression: ExpressionGuess
    n_perturbations: int = 0
    has_combinations: bool = False
    context_noun: str = "cell_type"
    notes: list[str] = field(default_factory=list)

    @property
    def perturbed(self) -> bool:
        """Whether the data has perturbed cells beside controls."""
        return self.perturbation.column is not None and self.n_perturbations > 0

    @property
    def single_context(self) -> bool:
        return len(self.contexts) <= 1


# ---------------------------------------------------------------------- obs columns
def _categorical_columns(obs: pd.DataFrame, max_levels: int) -> dict[str, pd.Series]:
    """Text / categorical columns with 1..max_levels distinct values (as strings)."""
    out = {}
    for name in obs.columns:
        col = obs[name]
        if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            continue
        values = col.astype(str)
        if 1 <= values.nunique() <= max_levels:
            out[str(name)] = values
    return out


def _looks_like_control(label: str) -> bool:
    tokens = set(re.split(r"[^a-z0-9]+", label.lower().replace("-", "")))
    return _norm_token(label) in _CONTROL_LOOKALIKES or bool(tokens & _CONTROL_WORDS)


def _ranked(names, patterns) -> list[str]:
    """``names`` that match a pattern, best pattern first, then the rest in order."""

    def rank(name: str) -> int:
        low = name.lower().replace(" ", "_")
        return next((i for i, p in enumerate(patterns) if p in low), len(patterns))

    return sorted(names, key=rank)


def _guess_perturbation(columns: dict[str, pd.Series]) -> tuple[ColumnGuess, list[str]]:
    with_controls = {
        name: sorted({v for v in values.unique() if _looks_like_control(v)})
        for name, values in columns.items()
    }
    with_controls = {n: c for n, c in with_controls.items() if c and columns[n].nunique() > 1}
    if not with_controls:
        return ColumnGuess(None), []
    ranked = _ranked(list(with_controls), _PERTURBATION_NAMES)
    return ColumnGuess(ranked[0], tuple(ranked[1:])), with_controls[ranked[0]]


def _guess_column(columns, patterns, exclude, *, require_match: bool) -> ColumnGuess:
    names = [n for n in columns if n not in exclude]
    matching = [n for n in names if any(p in n.lower().replace(" ", "_") for p in patterns)]
    ranked = _ranked(matching if require_match or matching else names, patterns)
    if not ranked:
        return ColumnGuess(None)
    return ColumnGuess(ranked[0], tuple(ranked[1:4]))


def _guess_type_column(columns: dict[str, pd.Series], exclude) -> ColumnGuess:
    for name in _ranked([n for n in columns if n not in exclude], ("perturbation_type", "type")):
        try:
            _standard_types(columns[name], name)  # the schema's own spelling rules
        except SchemaError:
            continue
        return ColumnGuess(name)
    return ColumnGuess(None)


def _separator(labels) -> str:
    for sep in ("+", "|", ";"):
        if any(sep in str(v) for v in labels):
            return sep
    return "+"


# ---------------------------------------------------------------------- expression
def _sample_rows(matrix, n_rows: int, seed: int = 0):
    rows = np.sort(np.random.default_rng(seed).choice(n_rows, min(n_rows, _SAMPLE_CELLS), False))
    block = matrix[rows]
    import scipy.sparse as sp

    return block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))


def _value_kind(block) -> tuple[str, float]:
    data = np.asarray(block.data, dtype=np.float64)
    data = data[data != 0]
    if data.size == 0:
        return "empty", 0.0
    top = float(data.max())
    if data.min() < 0:
        return "scaled", top
    if np.all(data == np.round(data)):
        return "counts", top
    return ("log", top) if top < 30 else ("normalized", top)


def _symbol_column(var: pd.DataFrame, var_names) -> str | None:
    names = pd.Index(var_names).astype(str)
    if np.mean([bool(_ENSEMBL_RE.match(n)) for n in names[:1000]]) < 0.5:
        return None
    for name in _ranked([str(c) for c in var.columns], _SYMBOL_COLUMNS):
        values = var[name].astype(str)
        if pd.api.types.is_numeric_dtype(var[name]) or values.nunique() < 0.5 * len(values):
            continue
        if np.mean([bool(_ENSEMBL_RE.match(v)) for v in values[:1000]]) < 0.5:
            return name
    return None


def _inspect_expression(adata, notes: list[str]) -> ExpressionGuess:
    kind, top = _value_kind(block := _sample_rows(adata.X, adata.n_obs))
    use_raw, layer = False, None
    if kind == "scaled":
        counts = [k for k in adata.layers if "count" in k.lower()]
        if adata.raw is not None:
            use_raw = True
            kind, top = _value_kind(block := _sample_rows(adata.raw.X, adata.n_obs))
            notes.append("X holds scaled values (negative numbers); adata.raw is used instead.")
        elif counts:
            layer = counts[0]
            kind, top = _value_kind(block := _sample_rows(adata.layers[layer], adata.n_obs))
            notes.append(f"X holds scaled values (negative numbers); layer {layer!r} is used.")
        else:
            notes.append(
                "X holds scaled values (negative numbers) and there is no .raw or counts layer: "
                "ranks of scaled values are not expression ranks. Point expression.layer at "
                "counts or log-normalized values before building."
            )
    transform = "log1p_cp10k" if kind in ("counts", "normalized") else "none"
    var = adata.raw.var if use_raw else adata.var
    names = adata.raw.var_names if use_raw else adata.var_names
    symbols = _symbol_column(var, names)
    duplicates = "error"
    if symbols is not None and var[symbols].astype(str).duplicated().any():
        duplicates = "sum" if kind == "counts" else "first"
    median_genes = float(np.median(np.diff(block.indptr))) if block.shape[0] else 0.0
    return ExpressionGuess(use_raw, layer, transform, kind, top, median_genes, symbols, duplicates)


# ---------------------------------------------------------------------- inspection
def inspect_h5ad(path: str | Path) -> DataInspection:
    """Inspect ``path`` (read in backed mode; a sample of cells for the values)."""
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give the .h5ad file to inspect.")
    adata = ad.read_h5ad(path, backed="r")
    try:
        return _inspect(adata, path)
    finally:
        adata.file.close()


def inspect_adata(adata, name: str = "<in memory>") -> DataInspection:
    """Inspect an AnnData already in memory (the web app's uploads), as :func:`inspect_h5ad`."""
    return _inspect(adata, Path(name))


def _inspect(adata, path: Path) -> DataInspection:
    notes: list[str] = []
    obs = adata.obs
    columns = _categorical_columns(obs, max_levels=max(2, min(1000, adata.n_obs // 2)))
    perturbation, controls = _guess_perturbation(columns)
    used = {perturbation.column}
    context_columns = {n: v for n, v in columns.items() if v.nunique() <= 200}
    context = _guess_column(context_columns, _CONTEXT_NAMES, used, require_match=False)
    used.add(context.column)
    ptype = _guess_type_column(columns, used)
    used.add(ptype.column)
    dose = _guess_column(columns, _DOSE_NAMES, used, require_match=True)
    used.add(dose.column)
    batch = _guess_column(columns, _BATCH_NAMES, used, require_match=True)
    contexts = sorted(columns[context.column].unique()) if context.column else []
    labels = columns[perturbation.column].unique() if perturbation.column else []
    perturbed = [v for v in labels if v not in controls]
    sep = _separator(perturbed)
    inspection = DataInspection(
        path=path,
        n_cells=int(adata.n_obs),
        n_genes=int(adata.n_vars),
        perturbation=perturbation,
        control_values=list(controls),
        target_separator=sep,
        cell_context=context,
        contexts=contexts,
        perturbation_type=ptype,
        type_constant=_type_constant(columns),
        dose=dose,
        batch=batch,
        expression=_inspect_expression(adata, notes),
        n_perturbations=len(perturbed),
        has_combinations=any(sep in v for v in perturbed),
        context_noun="cell_line"
        if context.column and "line" in context.column.lower()
        else "cell_type",
        notes=notes,
    )
    _check_controls(inspection, obs, notes)
    return inspection


def _type_constant(columns: dict[str, pd.Series]) -> str:
    """A perturbation type for data without a type column: drug when a column has DMSO /
    vehicle controls."""
    labels = {v for values in columns.values() if values.nunique() <= 50 for v in values.unique()}
    return "drug" if any(re.search(r"dmso|vehicle", v, re.I) for v in labels) else "other"


def _check_controls(inspection: DataInspection, obs: pd.DataFrame, notes: list[str]) -> None:
    """Note the contexts that have perturbed cells but no controls (the build refuses them)."""
    if not inspection.perturbed or inspection.cell_context.column is None:
        return
    pert = obs[inspection.perturbation.column].astype(str)
    ctx = obs[inspection.cell_context.column].astype(str)
    control = pert.isin(inspection.control_values)
    lacking = sorted(set(ctx[~control]) - set(ctx[control]))
    if lacking:
        notes.append(
            f"cell context(s) {lacking[:5]} have perturbed cells but no controls; the build "
            "needs controls in every context: choose another cell_context column, or drop those "
            "cells with source.obs_query."
        )


# ---------------------------------------------------------------------- rendering
def _y(value) -> str:
    """One YAML scalar / flow value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def _alternatives(guess: ColumnGuess) -> str:
    return f" (other candidates: {', '.join(guess.alternatives)})" if guess.alternatives else ""


def _header(ins: DataInspection, out_name: str) -> list[str]:
    expr = ins.expression
    lines = [
        f"# Data config written by `cellrlhf data init {ins.path}`",
        f"# ({ins.n_cells} cells x {ins.n_genes} genes; values look like {expr.kind}, up to "
        f"{expr.max_value:g}; a median of {expr.median_genes:g} expressed genes per cell).",
        "# Every value is a GUESS from the file: check the lines marked CHECK, then run",
        f"#   cellrlhf data build --config {out_name}",
    ]
    notes = list(ins.notes)
    if not ins.perturbed:
        notes.append(
            "no perturbation column with control labels (control, ctrl, DMSO, non-targeting, "
            "NT, ...) was found: every cell is treated as a control, and only the cell tasks "
            "are built. Name the perturbation column and its control labels below if it exists."
        )
    if ins.single_context:
        notes.append(
            "one cell context only: the cell_annotation task is off (there is nothing to tell "
            "apart) and unseen_context splits are impossible."
        )
    lines += [f"# NOTE: {n}" for n in notes]
    return lines


def _schema_lines(ins: DataInspection) -> list[str]:
    lines = ["schema:", "  columns:"]
    if ins.perturbed:
        lines.append(
            f"    perturbation: {_y(ins.perturbation.column)}  # CHECK: obs column naming the "
            f"perturbation ({ins.n_perturbations} perturbation(s)){_alternatives(ins.perturbation)}"
        )
    else:
        lines.append("    perturbation: {value: control}  # CHECK: no perturbations found")
    if ins.cell_context.column is not None:
        shown = ", ".join(ins.contexts[:8]) + (" ..." if len(ins.contexts) > 8 else "")
        lines.append(
            f"    cell_context: {_y(ins.cell_context.column)}  # CHECK: cell type / line "
            f"({len(ins.contexts)}: {shown}){_alternatives(ins.cell_context)}"
        )
    else:
        lines.append(
            "    cell_context: {value: cells}  # CHECK: one context for all cells; write its "
            "name (e.g. {value: K562}) or an obs column"
        )
    if ins.perturbation_type.column is not None:
        lines.append(f"    perturbation_type: {_y(ins.perturbation_type.column)}")
    else:
        lines.append(
            f"    perturbation_type: {{value: {ins.type_constant}}}  # CHECK: CRISPRa, CRISPRi, "
            "knockout, overexpression, RNAi, drug, cytokine or other"
        )
    for name, guess in (("dose", ins.dose), ("batch", ins.batch)):
        if guess.column is not None:
            lines.append(
                f"    {name}: {_y(guess.column)}{_alternatives(guess).replace(' (', '  # (')}"
            )
        else:
            lines.append(f"    # {name}: <obs column>  (none recognised)")
    controls = ins.control_values if ins.perturbed else ["control"]
    lines.append(f"  control_values: {_y(controls)}  # CHECK: labels of unperturbed cells")
    if ins.perturbed:
        lines.append(
            f"  target_separator: {_y(ins.target_separator)}  # joins the targets of a combination"
        )
    return lines


def _expression_lines(expr: ExpressionGuess) -> list[str]:
    why = {
        "counts": "raw counts (integers): normalized to 1e4 per cell, then log1p",
        "normalized": "non-integer values without a log: normalized to 1e4 per cell, then log1p",
        "log": "values look log-normalized already: used as they are",
        "scaled": "CHECK: scaled values cannot be ranked; point layer at counts or log values",
        "empty": "CHECK: the sampled cells are all zero",
    }[expr.kind]
    lines = [
        "expression:",
        f"  layer: {_y(expr.layer)}",
        f"  transform: {expr.transform}  # {why}",
    ]
    if expr.gene_symbols is not None:
        lines.append(f"  gene_symbols: {_y(expr.gene_symbols)}  # var_names are Ensembl IDs")
        lines.append(f"  duplicates: {expr.duplicates}  # repeated symbols: error, sum or first")
    return lines


def _task_lines(ins: DataInspection) -> list[str]:
    lines = ["sft:", f"  context_noun: {ins.context_noun}  # cell_type or cell_line", "  tasks:"]
    if ins.single_context:
        lines.append(
            "    cell_annotation: {enabled: false}  # one cell context: nothing to annotate"
        )
    else:
        lines.append("    cell_annotation: {max_examples: 2000, max_eval_examples: 300}")
    lines.append("    cell_generation: {max_examples: 500, max_eval_examples: 100}")
    if ins.perturbed:
        lines += [
            "    perturbation_response: {max_examples: 3000, max_eval_examples: 600, "
            "context: mixed}",
            "    perturbation_effect: {per_group: 4, max_examples: null, max_eval_examples: null}",
            "    perturbation_identification: {max_examples: 2000, max_eval_examples: 300}",
        ]
    return lines


def _split_lines(ins: DataInspection) -> list[str]:
    singles = ins.n_perturbations - (1 if ins.has_combinations else 0)
    if ins.perturbed and singles >= 4:
        kind, why = "unseen_single", "held-out perturbations (the RL benchmark)"
    else:
        kind, why = "random_cells", "cells drawn at random per group"
        if ins.perturbed:
            why += "; unseen_single needs several perturbations to hold out"
    lines = ["split:", f"  kind: {kind}  # {why}"]
    if kind == "unseen_single" and ins.has_combinations:
        lines[-1] += "; unseen_combo holds out combinations"
    lines += ["  test_fraction: 0.2", "  validation_fraction: 0.1", "  seed: 0"]
    return lines


def render_config(ins: DataInspection, *, name: str, source_path: str, out_name: str) -> str:
    """The commented data config YAML for the inspected file."""
    expr = ins.expression
    lines = [*_header(ins, out_name), f"name: {_y(name)}", "seed: 0", ""]
    lines += ["source:", f"  path: {_y(source_path)}"]
    if expr.use_raw:
        lines.append("  use_raw: true  # X is scaled; .raw holds the expression values")
    lines += ['  # obs_query: "<pandas query>"  # keep a subset of cells', ""]
    lines += [*_schema_lines(ins), "", *_expression_lines(expr), ""]
    lines += [
        "sentences:",
        f"  top_k: 100  # genes per cell sentence, highest first (cells express a median of "
        f"{expr.median_genes:g}; null keeps every expressed gene)",
        "",
        *_split_lines(ins),
        "",
        "pretrain:",
        f"  metadata_prefix: {'[]' if ins.single_context else '[cell_context]'}",
        "",
        *_task_lines(ins),
        "",
        "rl:",
        f"  enabled: {'true' if ins.perturbed else 'false'}"
        + ("" if ins.perturbed else "  # RL predicts perturbation responses: none here"),
    ]
    if ins.perturbed:
        lines.append("  min_cells: 20  # groups with fewer perturbed cells get no RL prompt")
    decoder = (
        "  method: neighbours  # per-gene lines + residuals of similar training cells "
        "(docs/metrics.md)"
        if ins.perturbed
        else "  method: per_gene"
    )
    lines += ["", "decoder:", decoder, "", "output:", f"  dir: outputs/data/{name}"]
    return "\n".join(lines) + "\n"


def write_data_config(
    h5ad: str | Path, out: str | Path | None = None, *, name: str | None = None, force: bool = False
) -> tuple[Path, DataInspection]:
    """Inspect ``h5ad`` and write its data config to ``out`` (default ``<stem>_data.yaml``).

    Returns the path written and the inspection. An existing ``out`` is kept unless ``force``.
    """
    h5ad = Path(h5ad)
    out = Path(out) if out is not None else Path(f"{h5ad.stem}_data.yaml")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it, or --out another name.")
    inspection = inspect_h5ad(h5ad)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or h5ad.stem)
    text = render_config(inspection, name=safe, source_path=str(h5ad), out_name=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out, inspection


# ---------------------------------------------------------------------- command line
@dataclass
class InitOptions:
    """Options of ``cellrlhf data init`` (flags, or keys of a ``--config`` YAML)."""

    h5ad: str = field(metadata={"positional": True, "help": "the AnnData file (.h5ad) to inspect"})
    out: str | None = field(
        default=None, metadata={"help": "config file to write (default: <file stem>_data.yaml)"}
    )
    name: str | None = field(
        default=None, metadata={"help": "data set name (default: the file stem)"}
    )
    force: bool = field(default=False, metadata={"help": "overwrite an existing --out"})


def run_init(args: InitOptions) -> int:
    """``cellrlhf data init``: write the config, print what was guessed; the exit status."""
    import sys

    try:
        out, ins = write_data_config(args.h5ad, args.out, name=args.name, force=args.force)
    except (FileNotFoundError, FileExistsError, OSError) as err:
        print(f"cellrlhf data: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} for {ins.path} ({ins.n_cells} cells x {ins.n_genes} genes):")
    pert = ins.perturbation.column
    print(
        f"  perturbation: {pert or 'none found (all cells are controls)'}"
        + (
            f", controls {ins.control_values}, {ins.n_perturbations} perturbation(s)"
            if pert
            else ""
        )
    )
    print(f"  cell context: {ins.cell_context.column or 'one context'} ({len(ins.contexts)})")
    print(f"  values: {ins.expression.kind} -> transform {ins.expression.transform}")
    for note in ins.notes:
        print(f"  note: {note}")
    print(f"Check the lines marked CHECK in {out}, then: cellrlhf data build --config {out}")
    return 0
