"""A seeded simulator of perturbation screens, for tests and the offline default.

The data are SIMULATED: every AnnData it returns carries ``uns["simulated"] = True`` and a
description, and every dataset built from it is marked ``"simulated": true`` in its manifest.

Generative model (all on the log scale of a gene's share of a cell's counts):

* ``n_genes`` genes: most belong to one of ``n_programs`` co-regulated gene programs, the rest
  are background. Each gene has a base abundance (log-normal across genes).
* Cell contexts (cell lines) shift program activities; batches shift genes slightly; every cell
  has its own program activity noise, so genes of a program co-vary within cells.
* Single perturbations target regulator genes. Each falls in one class (ground truth in
  ``uns["simulation"]["perturbations"]`` and ``obs["sim_class"]``):

  ``active``      moves one or two downstream programs up or down;
  ``null``        does nothing (most screens are mostly these);
  ``shared``      copies the phenotype of another, active perturbation (same complex/pathway);
  ``low_quality`` weak or no phenotype, and its cells have a fraction of the usual counts.

  A measured target gene is itself knocked down (CRISPRi, knockout) or up (CRISPRa).
* Combinations add their singles' effects; some also get an interaction (synergy) effect on a
  further program.
* Counts are negative binomial with mean ``library size x share`` and inverse dispersion
  ``dispersion``; library sizes are log-normal.

Gene symbols are synthetic and cannot be confused with human genes: program genes are
``Q<program letter><n>`` (``QA1``, ``QB7``), background genes ``QX<n>``, perturbation targets
``QT<n>`` (some measured, most not, as in real screens).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellrlhf.data.schema import CONTROL_LABEL, PERTURBATION_TYPES

__all__ = ["simulate_perturbation_data", "SIMULATION_DESCRIPTION"]

logger = logging.getLogger(__name__)

SIMULATION_DESCRIPTION = (
    "SIMULATED perturbation screen (cellrlhf.data.simulate): negative-binomial counts from gene "
    "programs; perturbations move downstream programs; many do nothing, several share one "
    "phenotype, some leave only low-quality cells. Not biological data."
)

_PROGRAM_LETTERS = "ABCDEFGHIJKLMNOP"  # 16 programs at most; X = background, T = targets
_CHUNK = 4096  # fixed, so the output depends only on the parameters and the seed


def _check(n_cells: int, n_genes: int, n_programs: int, n_perturbations: int, **fractions) -> None:
    if n_cells < 1 or n_genes < 4:
        raise ValueError(f"need n_cells >= 1 and n_genes >= 4, got {n_cells}, {n_genes}.")
    if not 1 <= n_programs <= len(_PROGRAM_LETTERS):
        raise ValueError(f"n_programs must be in 1..{len(_PROGRAM_LETTERS)}, got {n_programs}.")
    if n_genes < 2 * n_programs:
        raise ValueError(f"n_genes={n_genes} is too small for {n_programs} programs (>= 2 each).")
    if n_perturbations < 1:
        raise ValueError("n_perturbations must be >= 1.")
    for name, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}.")


def _check_settings(params: dict) -> None:
    """Every parameter of :func:`simulate_perturbation_data` in range, or one ``ValueError``."""
    fractions = [k for k in params if k.endswith("_fraction")]
    _check(
        params["n_cells"],
        params["n_genes"],
        params["n_programs"],
        params["n_perturbations"],
        **{k: params[k] for k in fractions},
    )
    classes = ("null_fraction", "shared_fraction", "low_quality_fraction")
    if sum(params[k] for k in classes) > 1.0:
        raise ValueError("null_fraction + shared_fraction + low_quality_fraction must be <= 1.")
    if params["perturbation_type"] not in PERTURBATION_TYPES:
        raise ValueError(f"perturbation_type must be one of {list(PERTURBATION_TYPES)}.")
    n = params["n_perturbations"]
    max_pairs = n * (n - 1) // 2
    if params["n_combinations"] > max_pairs:
        raise ValueError(
            f"n_combinations={params['n_combinations']} exceeds the {max_pairs} possible pairs."
        )


@dataclass(frozen=True)
class _Genes:
    """The measured genes: program of each (-1: background), symbols, measured targets."""

    program_of: np.ndarray
    names: list[str]
    target_names: list[str]  # QT1.. of every single perturbation, measured or not
    target_gene: dict[int, int]  # perturbation index -> index of its measured target gene
    membership: np.ndarray  # programs x genes, 1 where the gene is in the program


class _Shifts(NamedTuple):
    """Log-scale gene offsets: base abundance, per cell context, per batch."""

    base: np.ndarray
    context: np.ndarray
    batch: np.ndarray


class _Cells(NamedTuple):
    """Per cell: perturbation (row of the table), context, batch, library size."""

    pert: np.ndarray
    context: np.ndarray
    batch: np.ndarray
    library: np.ndarray


def _gene_names(program_of: np.ndarray, n_programs: int) -> list[str]:
    counters = dict.fromkeys(range(-1, n_programs), 0)
    names: list[str] = []
    for p in program_of:
        counters[p] += 1
        letter = "X" if p < 0 else _PROGRAM_LETTERS[p]
        names.append(f"Q{letter}{counters[p]}")
    return names


def _genes(rng, params: dict) -> _Genes:
    """Programs and symbols of the genes; some perturbation targets replace background genes."""
    n_genes, n_programs, n_perturbations = (
        params["n_genes"],
        params["n_programs"],
        params["n_perturbations"],
    )
    n_background = int(round(params["background_fraction"] * n_genes))
    n_background = min(n_background, n_genes - 2 * n_programs)
    program_of = np.full(n_genes, -1, dtype=np.int64)
    program_of[n_background:] = np.arange(n_genes - n_background) % n_programs
    rng.shuffle(program_of)
    names = _gene_names(program_of, n_programs)
    target_names = [f"QT{i + 1}" for i in range(n_perturbations)]
    n_measured = int(round(params["measured_target_fraction"] * n_perturbations))
    measured_targets = sorted(rng.choice(n_perturbations, size=n_measured, replace=False).tolist())
    background_idx = np.flatnonzero(program_of < 0)
    if n_measured > len(background_idx):
        raise ValueError(
            "too few background genes to measure the targets; lower measured_target_fraction."
        )
    target_gene: dict[int, int] = {}
    for t, gene in zip(
        measured_targets, rng.choice(background_idx, size=n_measured, replace=False), strict=True
    ):
        names[gene] = target_names[t]
        target_gene[t] = int(gene)
    membership = np.zeros((n_programs, n_genes), dtype=np.float64)
    membership[program_of[program_of >= 0], np.flatnonzero(program_of >= 0)] = 1.0
    return _Genes(program_of, names, target_names, target_gene, membership)


def _shifts(rng, genes: _Genes, n_contexts: int, n_batches: int) -> _Shifts:
    """Base abundances, context program activities (plus gene noise), batch shifts."""
    n_programs, n_genes = genes.membership.shape
    base = rng.normal(-2.0, 1.8, size=n_genes)
    context_activity = rng.normal(0.0, 0.7, size=(n_contexts, n_programs))
    context = context_activity @ genes.membership + rng.normal(0.0, 0.2, size=(n_contexts, n_genes))
    batch = rng.normal(0.0, 0.1, size=(n_batches, n_genes))
    return _Shifts(base, context, batch)


def _classes(rng, params: dict) -> np.ndarray:
    """The class of each single perturbation (``active``, ``null``, ``shared``, ``low_quality``)."""
    n = params["n_perturbations"]
    classes = np.array(["active"] * n, dtype=object)
    order = rng.permutation(n)
    n_null = int(round(params["null_fraction"] * n))
    n_shared = int(round(params["shared_fraction"] * n))
    n_low = int(round(params["low_quality_fraction"] * n))
    classes[order[:n_null]] = "null"
    classes[order[n_null : n_null + n_shared]] = "shared"
    classes[order[n_null + n_shared : n_null + n_shared + n_low]] = "low_quality"
    if not np.any(classes == "active") and n_shared:
        raise ValueError("shared perturbations need at least one active one; lower the fractions.")
    return classes


def _program_effects(rng, classes: np.ndarray, n_programs: int, effect_size: float):
    """Programs each perturbation moves and by how much; which active one a shared one copies."""
    active = np.flatnonzero(classes == "active")
    program_effects: dict[int, tuple[list[int], list[float]]] = {}
    for t in active:
        n_hit = int(rng.integers(1, 3))
        hit = rng.choice(n_programs, size=min(n_hit, n_programs), replace=False).tolist()
        size = rng.uniform(0.7, 1.3, size=len(hit)) * effect_size * rng.choice([-1, 1], len(hit))
        program_effects[int(t)] = (hit, size.tolist())
    shares_with: dict[int, int] = {}
    for t in np.flatnonzero(classes == "shared"):
        source = int(rng.choice(active))
        shares_with[int(t)] = source
        program_effects[int(t)] = program_effects[source]
    for t in np.flatnonzero(classes == "low_quality"):
        hit = [int(rng.integers(n_programs))]
        program_effects[int(t)] = (hit, [float(0.3 * effect_size * rng.choice([-1, 1]))])
    return program_effects, shares_with


def _single_effects(genes: _Genes, classes, program_effects, shares_with, direction: float):
    """Log effects (perturbations x genes) of the singles and their ground truth, by name."""
    effects = np.zeros((len(classes), genes.membership.shape[1]))
    truth: dict[str, dict] = {}
    for t in range(len(classes)):
        hit, size = program_effects.get(t, ([], []))
        for program, s in zip(hit, size, strict=True):
            effects[t] += s * genes.membership[program]
        if t in genes.target_gene:
            effects[t, genes.target_gene[t]] += direction * 2.0
        truth[genes.target_names[t]] = {
            "class": str(classes[t]),
            "programs": [_PROGRAM_LETTERS[p] for p in hit],
            "program_effects": [float(s) for s in size],
            "shares_with": genes.target_names[shares_with[t]] if t in shares_with else "",
            "measured_target": t in genes.target_gene,
        }
    return effects, truth


def _combinations(rng, genes: _Genes, effects, classes, n_combinations: int, effect_size: float):
    """Pairs of singles: summed effects, sometimes a synergy on a further program.

    Returns the combination names, their effects and their ground truth, by name.
    """
    n_perturbations, n_programs = len(classes), genes.membership.shape[0]
    pairs = [(i, j) for i in range(n_perturbations) for j in range(i + 1, n_perturbations)]
    chosen = rng.choice(len(pairs), size=n_combinations, replace=False) if n_combinations else []
    names: list[str] = []
    combo_effects: list[np.ndarray] = []
    truth: dict[str, dict] = {}
    for k in sorted(int(c) for c in chosen):
        i, j = pairs[k]
        effect = effects[i] + effects[j]
        synergy = ""
        if rng.random() < 0.3:
            program = int(rng.integers(n_programs))
            effect = effect + 0.8 * effect_size * rng.choice([-1, 1]) * genes.membership[program]
            synergy = _PROGRAM_LETTERS[program]
        name = "+".join(sorted([genes.target_names[i], genes.target_names[j]]))
        names.append(name)
        combo_effects.append(effect)
        low = "low_quality" in (classes[i], classes[j])
        truth[name] = {
            "class": "low_quality" if low else "combination",
            "programs": [],
            "program_effects": [],
            "shares_with": "",
            "measured_target": False,
            "synergy_program": synergy,
        }
    return names, combo_effects, truth


def _cells(rng, params: dict, n_groups: int, quality: np.ndarray) -> _Cells:
    """Each cell's perturbation (0: control), context, batch and library size."""
    n_cells = params["n_cells"]
    is_control = rng.random(n_cells) < params["control_fraction"]
    pert = np.where(is_control, 0, rng.integers(1, n_groups, size=n_cells))
    context = rng.integers(params["n_contexts"], size=n_cells)
    batch = rng.integers(params["n_batches"], size=n_cells)
    library = np.exp(rng.normal(np.log(params["mean_library_size"]), 0.35, size=n_cells))
    return _Cells(pert, context, batch, library * quality[pert])


def _counts(rng, cells: _Cells, shifts: _Shifts, genes: _Genes, effects, dispersion: float):
    """Negative-binomial counts (float32 CSR), drawn ``_CHUNK`` cells at a time."""
    n_cells = len(cells.pert)
    rows: list[sp.csr_matrix] = []
    for start in range(0, n_cells, _CHUNK):
        stop = min(start + _CHUNK, n_cells)
        noise = rng.normal(0.0, 0.3, size=(stop - start, genes.membership.shape[0]))
        log_rate = shifts.base + shifts.context[cells.context[start:stop]]
        log_rate = log_rate + shifts.batch[cells.batch[start:stop]]
        log_rate = log_rate + noise @ genes.membership + effects[cells.pert[start:stop]]
        log_rate -= log_rate.max(axis=1, keepdims=True)
        share = np.exp(log_rate)
        share /= share.sum(axis=1, keepdims=True)
        mean = share * cells.library[start:stop, None]
        counts = rng.negative_binomial(dispersion, dispersion / (dispersion + mean))
        rows.append(sp.csr_matrix(counts.astype(np.float32)))
    if not rows:
        return sp.csr_matrix((0, len(genes.names)), dtype=np.float32)
    return sp.vstack(rows, format="csr")


def _obs(cells: _Cells, names, classes, params: dict) -> pd.DataFrame:
    """The standard perturbation columns plus ``sim_class``, one row per cell."""
    perturbation = np.asarray(names, dtype=object)[cells.pert]
    dose = np.where(np.char.count(perturbation.astype(str), "+") > 0, "1+1", "1")
    dose = np.where(cells.pert == 0, "0", dose)
    contexts = [f"SIM-CL{i + 1}" for i in range(params["n_contexts"])]
    batches = [f"b{i + 1}" for i in range(params["n_batches"])]
    return pd.DataFrame(
        {
            "perturbation": pd.Categorical(perturbation),
            "cell_context": pd.Categorical(np.asarray(contexts, dtype=object)[cells.context]),
            "perturbation_type": params["perturbation_type"],
            "dose": pd.Categorical(dose),
            "batch": pd.Categorical(np.asarray(batches, dtype=object)[cells.batch]),
            "sim_class": pd.Categorical(np.asarray(classes, dtype=object)[cells.pert]),
        },
        index=pd.Index([f"simcell-{i:07d}" for i in range(len(cells.pert))]),
    )


def _var(genes: _Genes) -> pd.DataFrame:
    """Gene symbols with their program (``background`` outside every program)."""
    programs = ["background" if p < 0 else _PROGRAM_LETTERS[p] for p in genes.program_of]
    return pd.DataFrame({"program": programs}, index=pd.Index(genes.names))


def _log1p_layer(X: sp.csr_matrix) -> sp.csr_matrix:
    """``log1p(counts / total * 1e4)`` (float32 CSR; all-zero cells stay zero)."""
    totals = np.asarray(X.sum(axis=1)).ravel()
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    log1p = sp.diags(scale.astype(np.float32)) @ X
    log1p.data = np.log1p(log1p.data)
    return sp.csr_matrix(log1p, dtype=np.float32)


def _simulation_uns(params: dict, genes: _Genes, truth: dict) -> dict:
    """``uns["simulation"]``: description, parameters, programs and per-perturbation truth."""
    n_programs = genes.membership.shape[0]
    return {
        "description": SIMULATION_DESCRIPTION,
        "params": {k: (v if not isinstance(v, bool) else int(v)) for k, v in params.items()},
        "programs": {
            _PROGRAM_LETTERS[p]: [genes.names[g] for g in np.flatnonzero(genes.program_of == p)]
            for p in range(n_programs)
        },
        "perturbations": truth,
        "contexts": [f"SIM-CL{i + 1}" for i in range(params["n_contexts"])],
    }


def simulate_perturbation_data(
    n_cells: int = 2000,
    n_genes: int = 200,
    *,
    n_programs: int = 8,
    n_perturbations: int = 12,
    n_combinations: int = 4,
    n_contexts: int = 2,
    n_batches: int = 2,
    control_fraction: float = 0.15,
    null_fraction: float = 0.3,
    shared_fraction: float = 0.2,
    low_quality_fraction: float = 0.1,
    measured_target_fraction: float = 0.25,
    background_fraction: float = 0.4,
    perturbation_type: str = "CRISPRi",
    dispersion: float = 2.0,
    mean_library_size: float = 1500.0,
    effect_size: float = 1.2,
    add_log1p_layer: bool = True,
    seed: int = 0,
):
    """Simulate a perturbation screen with the standard perturbation schema in ``obs``.

    Parameters
    ----------
    n_cells, n_genes
        Size of the expression matrix.
    n_programs
        Co-regulated gene programs (at most 16).
    n_perturbations
        Single-target perturbations.
    n_combinations
        Two-target combinations of those singles (``"QT1+QT4"``).
    n_contexts
        Cell contexts (``SIM-CL1``, ...), each with its own program activities.
    n_batches
        Batches (``b1``, ...) with small gene-wise shifts.
    control_fraction
        Share of cells that are controls.
    null_fraction, shared_fraction, low_quality_fraction
        Shares of single perturbations that do nothing, copy another's phenotype, or leave only
        low-quality (low-count) cells. The rest are ``active``.
    measured_target_fraction
        Share of target genes that are among the measured genes.
    background_fraction
        Share of genes outside every program.
    perturbation_type
        Written to ``obs["perturbation_type"]`` (a standard type, e.g. CRISPRi).
    dispersion
        Negative-binomial inverse dispersion (smaller = noisier).
    mean_library_size
        Mean total counts per cell.
    effect_size
        Typical absolute log effect of an active perturbation on its programs.
    add_log1p_layer
        Add ``layers["log1p"] = log1p(counts / total * 1e4)``.
    seed
        Seed of the only random generator used.

    Returns
    -------
    AnnData with raw counts (float32 CSR) in ``X``; ``obs`` columns ``perturbation``,
    ``cell_context``, ``perturbation_type``, ``dose``, ``batch``, ``sim_class``;
    ``uns["simulated"] = True`` and ``uns["simulation"]`` (description, parameters, programs,
    per-perturbation ground truth).
    """
    import anndata as ad

    params = {**locals()}
    del params["ad"]
    _check_settings(params)
    rng = np.random.default_rng(seed)
    genes = _genes(rng, params)
    shifts = _shifts(rng, genes, n_contexts, n_batches)
    classes = _classes(rng, params)
    program_effects, shares_with = _program_effects(rng, classes, n_programs, effect_size)
    direction = -1.0 if perturbation_type in {"CRISPRi", "knockout", "RNAi"} else 1.0
    effects, truth = _single_effects(genes, classes, program_effects, shares_with, direction)
    combo_names, combo_effects, combo_truth = _combinations(
        rng, genes, effects, classes, n_combinations, effect_size
    )
    truth.update(combo_truth)
    names = [CONTROL_LABEL, *genes.target_names, *combo_names]
    all_effects = np.vstack([np.zeros((1, n_genes)), effects, *combo_effects])
    all_class = ["control", *[str(c) for c in classes], *[truth[n]["class"] for n in combo_names]]
    quality = np.array([1.0 if c != "low_quality" else 0.25 for c in all_class])
    cells = _cells(rng, params, len(names), quality)
    X = _counts(rng, cells, shifts, genes, all_effects, dispersion)

    adata = ad.AnnData(X=X, obs=_obs(cells, names, all_class, params), var=_var(genes))
    if add_log1p_layer:
        adata.layers["log1p"] = _log1p_layer(X)
    adata.uns["simulated"] = True
    adata.uns["simulation"] = _simulation_uns(params, genes, truth)
    logger.info("simulated %d cells x %d genes (%s)", n_cells, n_genes, "SIMULATED")
    return adata
