"""Predicted population vs control population in the loaded data, and the measured response.

The web app predicts from the *control cells* of the chosen cell context (never from one cell
that may already be perturbed), compares the predicted population with those controls as the
model sees them (encoded and decoded), and, when the data holds cells with that perturbation in
that context, puts the measured response beside it with the evaluation's metrics
(:func:`cellrlhf.evaluation.scoring.evaluate_predictions`, the numbers ``cellrlhf evaluate``
reports). Predicted cells without a single valid gene are left out; when none is valid the
prediction is reported as invalid, never as an effect.

Which ``obs`` columns hold the perturbation, the control labels and the context is guessed as
``cellrlhf data init`` guesses them (:func:`cellrlhf.data.init_config.inspect_adata`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "LOW_OVERLAP",
    "DataRoles",
    "PopulationPrediction",
    "choose_context",
    "data_roles",
    "overlap_warning",
    "predict_from_controls",
]

LOW_OVERLAP = 0.5  # below this share of the data's genes in the vocabulary, the app warns
CONTROL = "control"


@dataclass(frozen=True)
class DataRoles:
    """What the loaded data's ``obs`` columns mean (``None``: the data has no such column).

    Attributes
    ----------
    perturbation, controls, separator
        Perturbation column, its control labels and the separator of combinations (``A+B``).
        No perturbation column: every cell counts as a control.
    context
        Cell context column (cell type / line).
    transform
        ``"log1p_cp10k"`` when the values are counts, else ``"none"``.
    n_genes, n_known
        The data's genes and how many of them the model has a word for.
    """

    perturbation: str | None
    controls: tuple[str, ...]
    separator: str
    context: str | None
    transform: str
    n_genes: int
    n_known: int

    @property
    def overlap(self) -> float:
        return self.n_known / self.n_genes if self.n_genes else 0.0

    def is_control(self, obs) -> np.ndarray:
        """Boolean mask of control rows of ``obs``."""
        if self.perturbation is None:
            return np.ones(len(obs), dtype=bool)
        return obs[self.perturbation].astype(str).isin(self.controls).to_numpy()

    def targets_of(self, label: str) -> frozenset[str]:
        """Targets of a perturbation label, upper-case (``"b+a"`` -> ``{"A", "B"}``)."""
        return frozenset(t.strip().upper() for t in str(label).split(self.separator) if t.strip())

    def contexts(self, obs) -> list[str]:
        return sorted(obs[self.context].astype(str).unique()) if self.context else []


def data_roles(adata, lm, *, layer: str | None = None, name: str = "data") -> DataRoles:
    """Guess the roles of ``adata``'s columns and count its genes the model knows."""
    from cellrlhf.data.init_config import inspect_adata

    ins = inspect_adata(adata, name)
    try:
        encoded = lm.encode(adata[:1], layer=layer)
        n_known = int(encoded.params["n_genes_known"])
        n_genes = round(n_known / encoded.gene_overlap)
    except ValueError:  # no gene in common: encode says so when a cell is selected
        n_known, n_genes = 0, int(adata.n_vars)
    column = ins.perturbation.column if ins.perturbed else None
    return DataRoles(
        perturbation=column,
        controls=tuple(ins.control_values) if column else (),
        separator=ins.target_separator,
        context=ins.cell_context.column,
        transform=ins.expression.transform,
        n_genes=n_genes,
        n_known=n_known,
    )


def overlap_warning(roles: DataRoles) -> str | None:
    """A warning when few of the data's genes are in the model's vocabulary."""
    if roles.overlap >= LOW_OVERLAP:
        return None
    return (
        f"only {roles.n_known} of the data's {roles.n_genes} genes ({100 * roles.overlap:.0f}%) "
        "are in the model's vocabulary: cell sentences and predictions use these genes only, so "
        "the model sees little of each cell. Use a model trained on these genes, or data "
        "measuring the model's genes (gene symbols, not Ensembl IDs)."
    )


@dataclass
class PopulationPrediction:
    """A prediction from a context's control cells, and the measured response if any.

    Attributes
    ----------
    prediction
        :class:`~cellrlhf.chat.results.PerturbationPrediction` of the control cells
        (``layers["control"]``: the controls encoded and decoded).
    context
        The cell context predicted in.
    n_controls
        Control cells the prediction started from.
    n_valid
        Predicted cells with at least one valid gene (the others are left out of the means).
    evaluation
        :class:`~cellrlhf.evaluation.scoring.Evaluation` against the measured cells (``None``
        without measured cells, or when the prediction is invalid).
    n_measured
        Cells of the data with this perturbation in this context.
    """

    prediction: object
    context: str
    n_controls: int
    n_valid: int
    evaluation: object = None
    n_measured: int = 0

    @property
    def invalid(self) -> bool:
        """No predicted cell holds a valid gene (valid gene fraction 0)."""
        return self.n_valid == 0

    def deltas(self):
        """DataFrame of ``gene``, ``predicted`` change (and ``measured`` when there are measured
        cells), mean over valid predicted cells minus mean over decoded controls."""
        import pandas as pd

        if self.evaluation is not None:
            ev = self.evaluation
            return pd.DataFrame(
                {"gene": ev.genes, "predicted": ev.pred_delta[0], "measured": ev.real_delta[0]}
            )
        adata = self.prediction.adata
        valid = adata.obs["n_genes"].to_numpy() > 0
        pred = np.asarray(adata.X[valid].mean(axis=0)).ravel()
        ctrl = np.asarray(adata.layers["control"].mean(axis=0)).ravel()
        return pd.DataFrame({"gene": list(adata.var_names), "predicted": pred - ctrl})

    def top_genes(self, n: int = 12):
        """The ``n`` genes with the largest predicted increase and decrease (``direction``)."""
        import pandas as pd

        table = self.deltas()
        up = table[table["predicted"] > 0].sort_values("predicted", ascending=False, kind="stable")
        down = table[table["predicted"] < 0].sort_values("predicted", kind="stable")
        return pd.concat(
            [up.head(n).assign(direction="up"), down.head(n).assign(direction="down")],
            ignore_index=True,
        )

    def metrics(self) -> dict[str, float]:
        """The evaluation's main metrics (empty without measured cells)."""
        if self.evaluation is None:
            return {}
        row = self.evaluation.per_perturbation.iloc[0]
        wanted = ("pearson_delta", "mae_delta")
        if self.evaluation.params["n_candidates"] > 1:  # one candidate: a rank of 1 says nothing
            wanted += ("discrimination",)
        keys = [c for c in row.index if c.startswith(wanted)]
        return {k: float(row[k]) for k in keys}


def _control_rows(adata, roles: DataRoles, context: str | None) -> np.ndarray:
    mask = roles.is_control(adata.obs)
    if roles.context and context is not None:
        mask &= (adata.obs[roles.context].astype(str) == context).to_numpy()
    return np.flatnonzero(mask)


def choose_context(adata, roles: DataRoles, given: str | None, selected_row: int | None):
    """The context to predict in: ``given``, else the selected cell's, else the only one."""
    contexts = roles.contexts(adata.obs)
    if given:
        if contexts and given not in contexts:
            raise ValueError(
                f"cell context {given!r} is not in the data's {roles.context!r} column; "
                f"contexts: {', '.join(contexts[:12])}."
            )
        return given
    if selected_row is not None and roles.context:
        return str(adata.obs[roles.context].iloc[selected_row])
    if len(contexts) <= 1:
        return contexts[0] if contexts else None
    raise ValueError(
        f"choose a cell context (or select a cell): the data has {len(contexts)} in column "
        f"{roles.context!r}, e.g. {', '.join(contexts[:6])}."
    )


def predict_from_controls(
    lm,
    adata,
    roles: DataRoles,
    perturbation: str,
    *,
    context: str | None,
    n_cells: int = 8,
    perturbation_type: str | None = None,
    layer: str | None = None,
    seed: int = 0,
    evidence=None,
    gene_table=None,
) -> PopulationPrediction:
    """Predict ``perturbation`` from up to ``n_cells`` control cells of ``context`` (seeded
    choice), and evaluate against the data's cells with that perturbation there, if any.
    ``evidence`` and ``gene_table``: the measured evidence of the prompts, as in
    ``CellLM.predict_perturbation`` (default: the model's own)."""
    rows = _control_rows(adata, roles, context)
    if rows.size == 0:
        where = f" in cell context {context!r}" if context else ""
        raise ValueError(
            f"the data has no control cells{where} (controls: {list(roles.controls)} in column "
            f"{roles.perturbation!r}); predictions start from control cells."
        )
    if rows.size > n_cells:
        rows = np.sort(np.random.default_rng(seed).choice(rows, n_cells, replace=False))
    prediction = lm.predict_perturbation(
        adata[rows],
        perturbation,
        cell_context=context,
        perturbation_type=perturbation_type,
        layer=layer,
        seed=seed,
        progress=False,
        evidence=evidence,
        gene_table=gene_table,
    )
    valid = prediction.adata.obs["n_genes"].to_numpy() > 0
    result = PopulationPrediction(prediction, context or "", int(rows.size), int(valid.sum()))
    measured = _measured_rows(adata, roles, perturbation, context)
    result.n_measured = int(measured.size)
    if measured.size and not result.invalid:
        result.evaluation = _evaluate(prediction, valid, adata, roles, measured, context, layer)
    return result


def _measured_rows(adata, roles: DataRoles, perturbation: str, context) -> np.ndarray:
    if roles.perturbation is None:
        return np.array([], dtype=int)
    wanted = roles.targets_of(perturbation.replace("+", roles.separator))
    labels = adata.obs[roles.perturbation].astype(str).to_numpy()
    match = {label for label in set(labels) if roles.targets_of(label) == wanted}
    mask = np.isin(labels, list(match)) & ~roles.is_control(adata.obs)
    if roles.context and context is not None:
        mask &= (adata.obs[roles.context].astype(str) == context).to_numpy()
    return np.flatnonzero(mask)


def _evaluate(prediction, valid, adata, roles, measured, context, layer):
    """:func:`evaluate_predictions` of the valid predicted cells against the measured ones."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from cellrlhf.data.expression import transform_block
    from cellrlhf.evaluation.scoring import evaluate_predictions

    pred = prediction.adata
    label = prediction.perturbation
    pred_ad = ad.AnnData(
        X=sp.vstack([sp.csr_matrix(pred.X[valid]), sp.csr_matrix(pred.layers["control"])]),
        obs=pd.DataFrame(
            {"perturbation": [label] * int(valid.sum()) + [CONTROL] * pred.n_obs},
            index=[f"p{i}" for i in range(int(valid.sum()) + pred.n_obs)],
        ),
        var=pd.DataFrame(index=pred.var_names),
    )
    controls = _control_rows(adata, roles, context)
    rows = np.concatenate([controls, measured])
    X = adata.layers[layer][rows] if layer else adata.X[rows]
    X = transform_block(sp.csr_matrix(X, dtype=np.float32), roles.transform)
    real_ad = ad.AnnData(
        X=X,
        obs=pd.DataFrame(
            {"perturbation": [CONTROL] * controls.size + [label] * measured.size},
            index=[f"r{i}" for i in range(rows.size)],
        ),
        var=pd.DataFrame(index=[str(g) for g in adata.var_names]),
    )
    return evaluate_predictions(pred_ad, real_ad, de=False)
