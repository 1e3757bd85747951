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

    _check(
        n_cells,
        n_genes,
        n_programs,
        n_perturbations,
        control_fraction=control_fraction,
        null_fraction=null_fraction,
        shared_fraction=shared_fraction,
        low_quality_fraction=low_quality_fraction,
        measured_target_fraction=measured_target_fraction,
        background_fraction=background_fraction,
    )
    if null_fraction + shared_fraction + low_quality_fraction > 1.0:
        raise ValueError("null_fraction + shared_fraction + low_quality_fraction must be <= 1.")
    if perturbation_type not in PERTURBATION_TYPES:
        raise ValueError(f"perturbation_type must be one of {list(PERTURBATION_TYPES)}.")
    max_pairs = n_perturbations * (n_perturbations - 1) // 2
    if n_combinations > max_pairs:
        raise ValueError(f"n_combinations={n_combinations} exceeds the {max_pairs} possible pairs.")
    params = {k: v for k, v in locals().items() if k not in {"ad", "max_pairs"}}
    rng = np.random.default_rng(seed)

    # ---------------------------------------------------------------- genes and programs
    n_background = int(round(background_fraction * n_genes))
    n_background = min(n_background, n_genes - 2 * n_programs)
    program_of = np.full(n_genes, -1, dtype=np.int64)
    program_of[n_background:] = np.arange(n_genes - n_background) % n_programs
    rng.shuffle(program_of)
    counters = dict.fromkeys(range(-1, n_programs), 0)
    names: list[str] = []
    for p in program_of:
        counters[p] += 1
        letter = "X" if p < 0 else _PROGRAM_LETTERS[p]
        names.append(f"Q{letter}{counters[p]}")
    target_names = [f"QT{i + 1}" for i in range(n_perturbations)]
    n_measured = int(round(measured_target_fraction * n_perturbations))
    measured_targets = sorted(rng.choice(n_perturbations, size=n_measured, replace=False).tolist())
    background_idx = np.flatnonzero(program_of < 0)
    if n_measured > len(background_idx):
        raise ValueError(
            "too few background genes to measure the targets; lower measured_target_fraction."
        )
    target_gene_idx: dict[int, int] = {}
    for t, gene in zip(
        measured_targets, rng.choice(background_idx, size=n_measured, replace=False), strict=True
    ):
        names[gene] = target_names[t]
        target_gene_idx[t] = int(gene)
    membership = np.zeros((n_programs, n_genes), dtype=np.float64)
    membership[program_of[program_of >= 0], np.flatnonzero(program_of >= 0)] = 1.0

    base = rng.normal(-2.0, 1.8, size=n_genes)
    context_names = [f"SIM-CL{i + 1}" for i in range(n_contexts)]
    context_activity = rng.normal(0.0, 0.7, size=(n_contexts, n_programs))
    context_shift = context_activity @ membership + rng.normal(0.0, 0.2, size=(n_contexts, n_genes))
    batch_names = [f"b{i + 1}" for i in range(n_batches)]
    batch_shift = rng.normal(0.0, 0.1, size=(n_batches, n_genes))

    # ---------------------------------------------------------------- perturbation effects
    classes = np.array(["active"] * n_perturbations, dtype=object)
    order = rng.permutation(n_perturbations)
    n_null = int(round(null_fraction * n_perturbations))
    n_shared = int(round(shared_fraction * n_perturbations))
    n_low = int(round(low_quality_fraction * n_perturbations))
    classes[order[:n_null]] = "null"
    classes[order[n_null : n_null + n_shared]] = "shared"
    classes[order[n_null + n_shared : n_null + n_shared + n_low]] = "low_quality"
    active = np.flatnonzero(classes == "active")
    if len(active) == 0 and n_shared:
        raise ValueError("shared perturbations need at least one active one; lower the fractions.")
    direction = -1.0 if perturbation_type in {"CRISPRi", "knockout", "RNAi"} else 1.0
    effects = np.zeros((n_perturbations, n_genes))
    truth: dict[str, dict] = {}
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
    for t in range(n_perturbations):
        hit, size = program_effects.get(t, ([], []))
        for program, s in zip(hit, size, strict=True):
            effects[t] += s * membership[program]
        if t in target_gene_idx:
            effects[t, target_gene_idx[t]] += direction * 2.0
        truth[target_names[t]] = {
            "class": str(classes[t]),
            "programs": [_PROGRAM_LETTERS[p] for p in hit],
            "program_effects": [float(s) for s in size],
            "shares_with": target_names[shares_with[t]] if t in shares_with else "",
            "measured_target": t in target_gene_idx,
        }

    pairs = [(i, j) for i in range(n_perturbations) for j in range(i + 1, n_perturbations)]
    chosen = rng.choice(len(pairs), size=n_combinations, replace=False) if n_combinations else []
    combo_effects: list[np.ndarray] = []
    combo_names: list[str] = []
    combo_low: list[bool] = []
    for k in sorted(int(c) for c in chosen):
        i, j = pairs[k]
        effect = effects[i] + effects[j]
        synergy = ""
        if rng.random() < 0.3:
            program = int(rng.integers(n_programs))
            effect = effect + 0.8 * effect_size * rng.choice([-1, 1]) * membership[program]
            synergy = _PROGRAM_LETTERS[program]
        name = "+".join(sorted([target_names[i], target_names[j]]))
        combo_names.append(name)
        combo_effects.append(effect)
        low = "low_quality" in (classes[i], classes[j])
        combo_low.append(low)
        truth[name] = {
            "class": "low_quality" if low else "combination",
            "programs": [],
            "program_effects": [],
            "shares_with": "",
            "measured_target": False,
            "synergy_program": synergy,
        }

    all_names = [CONTROL_LABEL, *target_names, *combo_names]
    all_effects = np.vstack([np.zeros((1, n_genes)), effects, *combo_effects])
    all_class = ["control", *[str(c) for c in classes], *[truth[n]["class"] for n in combo_names]]
    quality = np.array([1.0 if c != "low_quality" else 0.25 for c in all_class])

    # ---------------------------------------------------------------- cells
    is_control = rng.random(n_cells) < control_fraction
    pert = np.where(is_control, 0, rng.integers(1, len(all_names), size=n_cells))
    context = rng.integers(n_contexts, size=n_cells)
    batch = rng.integers(n_batches, size=n_cells)
    library = np.exp(rng.normal(np.log(mean_library_size), 0.35, size=n_cells)) * quality[pert]

    rows: list[sp.csr_matrix] = []
    for start in range(0, n_cells, _CHUNK):
        stop = min(start + _CHUNK, n_cells)
        noise = rng.normal(0.0, 0.3, size=(stop - start, n_programs)) @ membership
        log_rate = base + context_shift[context[start:stop]] + batch_shift[batch[start:stop]]
        log_rate = log_rate + noise + all_effects[pert[start:stop]]
        log_rate -= log_rate.max(axis=1, keepdims=True)
        share = np.exp(log_rate)
        share /= share.sum(axis=1, keepdims=True)
        mean = share * library[start:stop, None]
        counts = rng.negative_binomial(dispersion, dispersion / (dispersion + mean))
        rows.append(sp.csr_matrix(counts.astype(np.float32)))
    X = sp.vstack(rows, format="csr") if rows else sp.csr_matrix((0, n_genes), dtype=np.float32)

    perturbation = np.asarray(all_names, dtype=object)[pert]
    dose = np.where(np.char.count(perturbation.astype(str), "+") > 0, "1+1", "1")
    dose = np.where(pert == 0, "0", dose)
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(perturbation),
            "cell_context": pd.Categorical(np.asarray(context_names, dtype=object)[context]),
            "perturbation_type": perturbation_type,
            "dose": pd.Categorical(dose),
            "batch": pd.Categorical(np.asarray(batch_names, dtype=object)[batch]),
            "sim_class": pd.Categorical(np.asarray(all_class, dtype=object)[pert]),
        },
        index=pd.Index([f"simcell-{i:07d}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(
        {"program": [("background" if p < 0 else _PROGRAM_LETTERS[p]) for p in program_of]},
        index=pd.Index(names),
    )
    adata = ad.AnnData(X=X, obs=obs, var=var)
    if add_log1p_layer:
        totals = np.asarray(X.sum(axis=1)).ravel()
        scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
        log1p = sp.diags(scale.astype(np.float32)) @ X
        log1p.data = np.log1p(log1p.data)
        adata.layers["log1p"] = sp.csr_matrix(log1p, dtype=np.float32)
    adata.uns["simulated"] = True
    adata.uns["simulation"] = {
        "description": SIMULATION_DESCRIPTION,
        "params": {k: (v if not isinstance(v, bool) else int(v)) for k, v in params.items()},
        "programs": {
            _PROGRAM_LETTERS[p]: [names[g] for g in np.flatnonzero(program_of == p)]
            for p in range(n_programs)
        },
        "perturbations": truth,
        "contexts": context_names,
    }
    logger.info("simulated %d cells x %d genes (%s)", n_cells, n_genes, "SIMULATED")
    return adata
