"""Score perturbation predictions (an AnnData of predicted cells) against real cells.

``evaluate_predictions`` is the one place every model, baseline and ceiling goes through, so
their numbers are comparable: the predicted AnnData holds predicted cells (or one pseudo-bulk
row) per perturbation plus control cells *as the predictor sees them* (decoded control cells
for a sentence model, real control cells for a baseline); the real AnnData holds real cells,
control included. Both are log-normalized expression.

Per perturbation (rows of :attr:`Evaluation.per_perturbation`):

- ``pearson_delta``, ``pearson_delta_top{k}``, ``mae``, ``mse``, ``mae_delta``, ``mse_delta``
  (:mod:`cellrlhf.reward.metrics`);
- ``pearson_specific``, ``pearson_specific_top{k}``: the same correlations on the change
  relative to the mean training change of the context (``reference_delta=``; NaN without it);
  the ``mean`` baseline scores 0 on them (:func:`cellrlhf.reward.metrics.pearson_specific`);
- ``average_response_fraction``: how much of the context's mean training change the predicted
  change contains (its projection coefficient on it; the ``mean`` baseline scores 1; NaN
  without ``reference_delta``): a model far below 1 does not reproduce the average response;
- ``discrimination_score_{l1,l2,cosine}``: rank of the true perturbation among all real
  perturbations in ``real`` (:mod:`cellrlhf.evaluation.discrimination`);
- with ``de=True``: ``overlap_at_N``, ``overlap_at_{k}``, ``precision_at_N``,
  ``signed_overlap_at_N``, ``de_direction_match``, ``de_sig_genes_recall``, ``de_n_real``,
  ``de_n_pred`` (:mod:`cellrlhf.reward.de`). A prediction given as one pseudo-bulk row per
  perturbation has no cells to test, and its DE metrics are NaN. ``cell-eval`` instead repeats
  the profile as identical "cells"; against zero-inflated control cells that calls most genes
  with fold changes near 0 (on Norman data even the control-mean baseline "finds" 92 of 500
  genes), so the numbers are noise. Repeat the rows yourself to get that convention: several
  rows are always treated as cells;
- ``distinct_fraction``: distinct predicted cells / predicted cells (NaN for one row): a
  collapsed generator scores ``1 / n``;
- ``sampling_reliability``: split-half reliability of the predicted change over the predicted
  cells (:func:`cellrlhf.metrics.sampling_noise.split_half_change_reliability`; NaN for fewer
  than 8 rows): well below 1, the prediction is mostly sampling noise and more cells per prompt
  would change it;
- ``sampling_reliability_specific``: the same for the change ``pearson_specific`` scores (from
  the reference profile; NaN without ``reference_delta``). Lower than ``sampling_reliability``
  where most of the predicted change is the shared response: the specific part is smaller
  against the same noise, and ``pearson_specific`` is attenuated more.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellrlhf.cell2text.markup import split_perturbation
from cellrlhf.evaluation.discrimination import (
    DISTANCE_METRICS,
    discrimination_score,
    target_gene_mask,
)
from cellrlhf.metrics.de import FDR_THRESHOLD, differential_expression
from cellrlhf.metrics.de_overlap import (
    direction_match,
    overlap_at_n,
    precision_at_n,
    sig_genes_recall,
    signed_overlap_at_n,
)
from cellrlhf.metrics.fidelity import (
    average_response_fraction,
    change_from_control,
    mae,
    mse,
    pearson_delta,
    pearson_delta_top_k,
    pearson_specific_rows,
    pearson_specific_top_k,
    specific_change,
)
from cellrlhf.metrics.pseudobulk import group_codes, group_means
from cellrlhf.metrics.sampling_noise import spearman_brown, split_half_change_reliability
from cellrlhf.reward.diversity import distinct_rows_fraction

__all__ = [
    "KIND_ALL",
    "Evaluation",
    "evaluate_predictions",
    "perturbation_kind",
    "perturbation_kinds",
    "summarize",
    "targets_measured",
    "spearman_brown",
    "SPEARMAN_BROWN_METRICS",
    "is_correlation_metric",
]

logger = logging.getLogger(__name__)

KIND_ALL = "all"
# correlation-like metrics that the split-half ceiling corrects to full depth (as cell-eval)
SPEARMAN_BROWN_METRICS = (
    "pearson_delta",
    "discrimination_score_l1",
    "discrimination_score_l2",
    "discrimination_score_cosine",
    "overlap_at_N",
    "precision_at_N",
    "de_direction_match",
    "de_sig_genes_recall",
)
# column families (``<prefix><k>``) that are correlations too
_CORRELATION_PREFIXES = ("pearson_delta_top", "pearson_specific")


def is_correlation_metric(column: str) -> bool:
    """Whether the split-half ceiling of ``column`` is corrected by Spearman-Brown.

    True for :data:`SPEARMAN_BROWN_METRICS` and the Pearson families
    (``pearson_delta_top{k}``, ``pearson_specific``, ``pearson_specific_top{k}``).
    """
    return column in SPEARMAN_BROWN_METRICS or column.startswith(_CORRELATION_PREFIXES)


def perturbation_kind(perturbation: str, *, sep: str = "+") -> str:
    """``"combo"`` for ``A+B`` (two or more targets), else ``"single"``."""
    return "combo" if len(split_perturbation(perturbation, sep=sep)) > 1 else "single"


def targets_measured(perts, genes) -> list[bool]:
    """Whether every target of each perturbation is a measured gene (case-insensitive): a model
    trained on the data knows an unseen target only through its measured expression (or a gene
    table)."""
    upper = {str(g).upper() for g in genes}
    return [all(t.upper() in upper for t in split_perturbation(str(p))) for p in perts]


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one prediction set.

    Attributes
    ----------
    per_perturbation
        One row per predicted perturbation: ``perturbation``, ``kind``, ``n_pred``,
        ``n_real`` and the metrics.
    params
        The settings used (pert column, control, top-k, DE cut-offs...).
    pred_delta, real_delta
        ``(n_perturbations, n_genes)`` predicted and real changes from control, rows in the
        order of ``per_perturbation`` (for plots).
    genes
        Gene names of the delta columns.
    not_applicable
        Perturbations the method was asked for but cannot predict (a baseline that does not
        apply to them): columns ``perturbation`` and ``kind``; empty for most methods.
    """

    per_perturbation: pd.DataFrame
    params: dict
    pred_delta: np.ndarray
    real_delta: np.ndarray
    genes: np.ndarray
    not_applicable: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame({"perturbation": [], "kind": []}, dtype=object)
    )

    def summary(self) -> pd.DataFrame:
        """Mean of every metric over all perturbations and per kind (single / combo)."""
        return summarize(self.per_perturbation)


def summarize(per_perturbation: pd.DataFrame, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Mean of every metric per ``by`` columns (e.g. ``("method",)``) and kind.

    Rows for ``kind == "all"`` (every perturbation) come first, then ``single`` and ``combo``;
    ``n_perturbations`` counts the rows averaged. NaN values (e.g. an undefined correlation)
    are left out of a mean.
    """
    skip = {"perturbation", "kind", "target_measured", "n_pred", "n_real", *by}
    metric_cols = [
        c
        for c in per_perturbation.columns
        if c not in skip and pd.api.types.is_numeric_dtype(per_perturbation[c])
    ]
    both = pd.concat([per_perturbation.assign(kind=KIND_ALL), per_perturbation], ignore_index=True)
    keys = [*by, "kind"]
    grouped = both.groupby(keys, sort=False)
    out = grouped[metric_cols].mean()
    out.insert(0, "n_perturbations", grouped.size())
    out = out.reset_index()
    order = {KIND_ALL: 0, "single": 1, "combo": 2}
    out["_order"] = out["kind"].map(lambda k: order.get(k, 3))
    if by:
        labels = list(zip(*(both[b] for b in by), strict=True))
        first_seen = {k: i for i, k in enumerate(dict.fromkeys(labels))}
        out["_by"] = [first_seen[t] for t in zip(*(out[b] for b in by), strict=True)]
        out = out.sort_values(["_by", "_order"], kind="stable").drop(columns="_by")
    else:
        out = out.sort_values("_order", kind="stable")
    return out.drop(columns="_order").reset_index(drop=True)


def _matrix(adata, layer: str | None):
    X = adata.X if layer is None else adata.layers[layer]
    if X is None:
        raise ValueError("the AnnData has no expression matrix (X is None); pass layer=.")
    return X


def _aligned_genes(pred, real) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred_names = np.asarray(pred.var_names, dtype=object)
    real_names = np.asarray(real.var_names, dtype=object)
    if len(pred_names) == len(real_names) and np.array_equal(pred_names, real_names):
        idx = np.arange(len(real_names))
        return real_names, idx, idx
    pred_pos = {str(g): i for i, g in enumerate(pred_names)}
    shared = [i for i, g in enumerate(real_names) if str(g) in pred_pos]
    if not shared:
        raise ValueError(
            "the predicted and real AnnData share no gene names (var_names); e.g. predicted "
            f"{list(pred_names[:3])} vs real {list(real_names[:3])}. Use the same gene symbols."
        )
    dropped_real = len(real_names) - len(shared)
    dropped_pred = len(pred_names) - len(shared)
    if dropped_real or dropped_pred:
        logger.warning(
            "evaluating on the %d genes both AnnData have (%d real-only and %d predicted-only "
            "genes left out).",
            len(shared),
            dropped_real,
            dropped_pred,
        )
    real_idx = np.asarray(shared, dtype=np.int64)
    pred_idx = np.asarray([pred_pos[str(real_names[i])] for i in shared], dtype=np.int64)
    return real_names[real_idx], pred_idx, real_idx


def _labels(adata, pert_col: str, control: str, which: str) -> tuple[np.ndarray, np.ndarray]:
    if pert_col not in adata.obs.columns:
        raise KeyError(
            f"pert_col={pert_col!r} is not a column of the {which} AnnData's obs; available: "
            f"{list(adata.obs.columns)}."
        )
    cats, codes = group_codes(adata.obs[pert_col].to_numpy())
    if control not in set(cats):
        raise ValueError(
            f"the {which} AnnData has no control cells ({pert_col}=={control!r}). Include "
            "control cells: the predicted AnnData needs the control as the predictor sees it "
            "(decoded control cells for a sentence model), the real one the real control."
        )
    return cats, codes


@dataclass(frozen=True)
class _Groups:
    """One AnnData's cells grouped by perturbation label, with mean profiles on the evaluation
    genes."""

    X: object
    genes: np.ndarray  # columns of X that are the evaluation genes
    labels: np.ndarray  # sorted unique labels
    codes: np.ndarray  # each cell's position in labels
    bulk: np.ndarray  # mean profile of every label on the evaluation genes
    control: int  # position of the control label

    @classmethod
    def of(cls, X, adata, genes, pert_col: str, control: str, which: str) -> _Groups:
        labels, codes = _labels(adata, pert_col, control, which)
        bulk = group_means(X, codes, len(labels))[:, genes]
        return cls(X, genes, labels, codes, bulk, int(np.flatnonzero(labels == control)[0]))

    @property
    def control_mean(self) -> np.ndarray:
        return self.bulk[self.control]

    def rows(self, labels) -> np.ndarray:
        """Positions of ``labels`` among this side's labels."""
        position = {c: i for i, c in enumerate(self.labels)}
        return np.asarray([position[label] for label in labels])

    def delta(self, rows: np.ndarray) -> np.ndarray:
        """Change of the mean profiles at ``rows`` from the control's."""
        return change_from_control(self.bulk[rows], self.control_mean)

    def cells(self, row: int) -> np.ndarray:
        """Indices of the cells of the label at ``row``."""
        return np.flatnonzero(self.codes == row)

    def dense(self, cells: np.ndarray) -> np.ndarray:
        """Expression of ``cells`` on the evaluation genes, as a dense array."""
        X = self.X
        block = X[cells][:, self.genes] if sp.issparse(X) else np.asarray(X)[cells][:, self.genes]
        return block.toarray() if sp.issparse(block) else np.asarray(block, dtype=np.float64)

    def counts(self, rows: np.ndarray) -> np.ndarray:
        return np.bincount(self.codes, minlength=len(self.labels))[rows]


def _scored_perturbations(pred: _Groups, real: _Groups, pert_col: str, control: str):
    """The predicted perturbations (each must have real cells), control left out."""
    unknown = sorted(set(pred.labels) - set(real.labels))
    if unknown:
        raise ValueError(
            f"{len(unknown)} predicted perturbation(s) have no real cells: {unknown[:10]}. "
            "Evaluate predictions against the real data of the same perturbations."
        )
    perts = np.asarray([c for c in pred.labels if c != control], dtype=object)
    if perts.size == 0:
        raise ValueError(f"the predicted AnnData has only control cells ({pert_col}=={control!r}).")
    return perts


def evaluate_predictions(
    pred,
    real,
    *,
    pert_col: str = "perturbation",
    control: str = "control",
    pred_layer: str | None = None,
    real_layer: str | None = None,
    top_k: int = 20,
    de: bool = True,
    de_k: tuple[int, ...] = (50,),
    fdr_threshold: float = FDR_THRESHOLD,
    distances: tuple[str, ...] = DISTANCE_METRICS,
    is_log1p: bool = True,
    kind_col: str | None = None,
    reference_delta=None,
    reference_control=None,
    progress: bool = False,
) -> Evaluation:
    """Metric table of predicted vs real perturbation responses.

    Parameters
    ----------
    pred
        Predicted cells (or one pseudo-bulk row per perturbation) with ``obs[pert_col]``,
        including control rows as the predictor sees the control.
    real
        Real cells with ``obs[pert_col]``, control included. Perturbations predicted must be
        in ``real``; every real perturbation is a candidate for discrimination.
    pert_col, control
        Perturbation column and control label (both AnnData).
    pred_layer, real_layer
        Expression layers (default ``X``); log-normalized values.
    top_k
        Genes of ``pearson_delta_top{k}``.
    de
        Run the DE tests (Mann-Whitney U per gene; the slow part) for the DE metrics.
    de_k
        Extra fixed cut-offs for ``overlap_at_{k}`` (``overlap_at_N`` is always reported).
    fdr_threshold
        FDR below which a gene is differentially expressed.
    distances
        Discrimination distances (``l1`` is the Virtual Cell Challenge's).
    is_log1p
        Values are log1p-normalized (fold changes are taken in count space).
    kind_col
        ``obs`` column of ``real`` giving each perturbation's kind; default: ``"combo"`` when the
        label has several targets (``A+B``), else ``"single"``.
    reference_delta
        The mean training change of the cell context (what the ``mean`` baseline predicts),
        for ``pearson_specific`` and ``pearson_specific_top{k}``: a :class:`pandas.Series`
        indexed by gene name, or a 1-D array in the order of ``real.var_names``; or one
        reference per perturbation, a :class:`pandas.DataFrame` indexed by perturbation with
        gene-name columns (a leave-one-out reference when the perturbations were trained).
        ``None``: those columns are NaN.
    reference_control
        The control the reference profile ``max(control + reference_delta, 0)`` is built on, for
        both sides (same forms as ``reference_delta``). Default: each side's own control. The
        split-half ceiling passes the full real control: its halves have disjoint control
        halves, and subtracting each half's own control would put the control-half difference
        into both sides with opposite signs (a negative "ceiling" where effects are small).
    progress
        Progress bar over perturbations.
    """
    for which, adata in (("predicted", pred), ("real", real)):
        if adata.n_obs == 0:
            raise ValueError(f"the {which} AnnData has no cells.")
    genes, pred_genes, real_genes = _aligned_genes(pred, real)
    Xp, Xr = _matrix(pred, pred_layer), _matrix(real, real_layer)
    ps = _Groups.of(Xp, pred, pred_genes, pert_col, control, "predicted")
    rs = _Groups.of(Xr, real, real_genes, pert_col, control, "real")
    perts = _scored_perturbations(ps, rs, pert_col, control)
    pred_rows, real_rows = ps.rows(perts), rs.rows(perts)
    reference = _reference_on_genes(reference_delta, real, real_genes, perts)
    shared = None if reference is None else _reference_on_genes(reference_control, real, real_genes)
    pred_delta = ps.delta(pred_rows)
    table = pd.DataFrame(
        {
            "perturbation": perts,
            "kind": perturbation_kinds(real, perts, pert_col=pert_col, kind_col=kind_col),
            "target_measured": targets_measured(perts, real.var_names),
            "n_pred": ps.counts(pred_rows),
            "n_real": rs.counts(real_rows),
            **_profile_metrics(ps, pred_rows, rs, real_rows, top_k, reference, shared),
            **_discrimination_scores(pred_delta, rs, perts, genes, control, distances),
        }
    )
    tests = _DETests(tuple(de_k), fdr_threshold, is_log1p) if de else None
    table = _cell_level_metrics(table, ps, pred_rows, rs, real_rows, tests, progress)
    table["sampling_reliability_specific"] = (
        np.nan
        if reference is None
        else split_half_change_reliability(
            ps.X,
            ps.codes,
            pred_rows,
            np.maximum((ps.control_mean if shared is None else shared) + reference, 0.0),
            genes=ps.genes,
        )
    )
    params = {
        "pert_col": pert_col,
        "control": control,
        "top_k": top_k,
        "de": de,
        "de_k": list(de_k),
        "fdr_threshold": fdr_threshold,
        "distances": list(distances),
        "n_genes": len(genes),
        "n_candidates": len(rs.labels) - 1,
        "specific_reference": reference is not None,
    }
    return Evaluation(
        per_perturbation=table.reset_index(drop=True),
        params=params,
        pred_delta=pred_delta,
        real_delta=rs.delta(real_rows),
        genes=np.asarray(genes, dtype=object),
    )


def _profile_metrics(pred: _Groups, pred_rows, real: _Groups, real_rows, top_k, reference, shared):
    """The metrics of the mean profiles per perturbation; ``pearson_specific*`` on the change
    from ``max(control + reference, 0)``, on ``shared`` as both sides' control when given (NaN
    without a reference)."""
    p_bulk, r_bulk = pred.bulk[pred_rows], real.bulk[real_rows]
    p_delta, r_delta = pred.delta(pred_rows), real.delta(real_rows)
    specific = tuple(np.full(len(p_bulk), np.nan) for _ in range(3))
    if reference is not None:
        p_control = pred.control_mean if shared is None else shared
        p_specific = specific_change(p_bulk, p_control, reference)
        r_specific = specific_change(
            r_bulk, real.control_mean if shared is None else shared, reference
        )
        specific = (
            pearson_specific_rows(p_specific, r_specific),
            pearson_specific_top_k(p_specific, r_specific, top_k),
            average_response_fraction(p_bulk, p_control, reference),
        )
    return {
        "pearson_delta": pearson_delta(p_bulk, pred.control_mean, r_bulk, real.control_mean),
        f"pearson_delta_top{top_k}": pearson_delta_top_k(p_delta, r_delta, top_k),
        "pearson_specific": specific[0],
        f"pearson_specific_top{top_k}": specific[1],
        "average_response_fraction": specific[2],
        "mae": mae(p_bulk, r_bulk),
        "mse": mse(p_bulk, r_bulk),
        "mae_delta": mae(p_delta, r_delta),
        "mse_delta": mse(p_delta, r_delta),
    }


def _discrimination_scores(pred_delta, real: _Groups, perts, genes, control: str, distances):
    """Per distance, the rank score of each true perturbation among all real perturbations."""
    candidates = np.asarray([c for c in real.labels if c != control], dtype=object)
    all_real_delta = real.delta(real.rows(candidates))
    true_index = np.asarray([int(np.flatnonzero(candidates == p)[0]) for p in perts])
    exclude = target_gene_mask(perts, genes)
    return {
        f"discrimination_score_{metric}": discrimination_score(
            pred_delta, all_real_delta, true_index=true_index, exclude=exclude, metric=metric
        )
        for metric in distances
    }


@dataclass(frozen=True)
class _DETests:
    """How the DE metrics are taken: extra ``overlap_at_{k}`` cut-offs, the FDR threshold, and
    whether values are log1p (fold changes in count space)."""

    de_k: tuple[int, ...]
    fdr_threshold: float
    is_log1p: bool

    def columns(self) -> list[str]:
        return [
            "overlap_at_N",
            *(f"overlap_at_{k}" for k in self.de_k),
            "precision_at_N",
            "signed_overlap_at_N",
            "de_direction_match",
            "de_sig_genes_recall",
            "de_n_real",
            "de_n_pred",
        ]

    def test(self, cells: np.ndarray, control_cells: np.ndarray):
        return differential_expression(cells, control_cells, is_log1p=self.is_log1p)

    def n_significant(self, result) -> int:
        return int(result.significant(self.fdr_threshold).sum())

    def row(self, real_de, pred_de) -> dict:
        """The DE metrics of one perturbation from its real and predicted DE tests."""
        fdr = {"fdr_threshold": self.fdr_threshold}
        return {
            "overlap_at_N": overlap_at_n(real_de, pred_de, None, **fdr),
            **{f"overlap_at_{k}": overlap_at_n(real_de, pred_de, k, **fdr) for k in self.de_k},
            "precision_at_N": precision_at_n(real_de, pred_de, None, **fdr),
            "signed_overlap_at_N": signed_overlap_at_n(real_de, pred_de, None, **fdr),
            "de_direction_match": direction_match(real_de, pred_de, **fdr),
            "de_sig_genes_recall": sig_genes_recall(real_de, pred_de, **fdr),
            "de_n_real": self.n_significant(real_de),
            "de_n_pred": self.n_significant(pred_de),
        }


def _cell_level_metrics(table, pred: _Groups, pred_rows, real: _Groups, real_rows, de, progress):
    """``table`` with the metrics that need cells: the DE metrics (``de``, a :class:`_DETests`;
    ``None``: none), the fraction of distinct predicted cells and the split-half reliability of
    the predicted change."""
    from tqdm.auto import tqdm

    perts = table["perturbation"].to_numpy()
    distinct = np.full(len(perts), np.nan)
    rows: dict[str, dict] = {}
    if de:
        pred_ctrl_cells = pred.dense(pred.cells(pred.control))
        real_ctrl_cells = real.dense(real.cells(real.control))
    for i, p in enumerate(tqdm(perts, desc="evaluate", disable=not progress)):
        p_cells_idx = pred.cells(pred_rows[i])
        if len(p_cells_idx) > 1:
            distinct[i] = distinct_rows_fraction(pred.X[p_cells_idx])[0]
        if not de:
            continue
        real_de = de.test(real.dense(real.cells(real_rows[i])), real_ctrl_cells)
        if len(p_cells_idx) == 1:  # one profile: nothing to test
            rows[p] = {
                **dict.fromkeys(de.columns(), np.nan),
                "de_n_real": de.n_significant(real_de),
            }
            continue
        pred_de = de.test(pred.dense(p_cells_idx), pred_ctrl_cells)
        rows[p] = de.row(real_de, pred_de)
    if de:
        de_table = pd.DataFrame.from_dict(rows, orient="index", columns=de.columns())
        table = table.join(de_table, on="perturbation")
    table["distinct_fraction"] = distinct
    table["sampling_reliability"] = split_half_change_reliability(
        pred.X, pred.codes, pred_rows, pred.control_mean, genes=pred.genes
    )
    return table


def _positions(index, wanted, what: str, fix: str) -> np.ndarray:
    pos = pd.Index(pd.Index(index).astype(str)).get_indexer([str(w) for w in wanted])
    if (pos < 0).any():
        missing = [str(w) for w, i in zip(wanted, pos, strict=True) if i < 0]
        raise ValueError(
            f"reference_delta has no value for {len(missing)} {what}, e.g. {missing[:5]}; {fix}."
        )
    return pos


def _reference_on_genes(reference_delta, real, real_genes, perts=()) -> np.ndarray | None:
    """``reference_delta`` on the evaluation genes (``None`` when not given); a per-perturbation
    DataFrame gives one row per entry of ``perts``."""
    if reference_delta is None:
        return None
    names = np.asarray(real.var_names, dtype=object)[real_genes]
    fix = "compute it on the genes of the real AnnData"
    if isinstance(reference_delta, pd.DataFrame):
        rows = _positions(reference_delta.index, perts, "scored perturbation(s)", "add their rows")
        cols = _positions(reference_delta.columns, names, "evaluation gene(s)", fix)
        values = reference_delta.to_numpy(dtype=np.float64)[np.ix_(rows, cols)]
    elif isinstance(reference_delta, pd.Series):
        pos = _positions(reference_delta.index, names, "evaluation gene(s)", fix)
        values = reference_delta.to_numpy(dtype=np.float64)[pos]
    else:
        values = np.asarray(reference_delta, dtype=np.float64)
        if values.shape != (real.n_vars,):
            raise ValueError(
                f"reference_delta has shape {values.shape}; expected ({real.n_vars},), one value "
                "per gene of the real AnnData in its var_names order (or pass a pandas Series "
                "indexed by gene name)."
            )
        values = values[real_genes]
    if not np.all(np.isfinite(values)):
        raise ValueError("reference_delta contains NaN or infinite values.")
    return values


def perturbation_kinds(
    real, perts, *, pert_col: str = "perturbation", kind_col: str | None = None
) -> list[str]:
    """Kind of each perturbation: ``real.obs[kind_col]`` or :func:`perturbation_kind`."""
    if kind_col is None:
        return [perturbation_kind(str(p)) for p in perts]
    if kind_col not in real.obs.columns:
        raise KeyError(f"kind_col={kind_col!r} is not a column of the real AnnData's obs.")
    first = real.obs.groupby(pert_col, observed=True)[kind_col].first()
    return [str(first.loc[p]) for p in perts]
