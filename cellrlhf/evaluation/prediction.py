"""A saved model's predicted cells for the held-out RL prompts of a dataset, as AnnData.

For every RL test prompt (one perturbation in one cell context) the model writes
``cells_per_prompt`` answers, sampled as the RL trainers sample (temperature 1.0, no top-k / top-p
truncation: the distribution RL optimised). Each answer's cell sentence is extracted
(:func:`~cellrlhf.cell2text.markup.extract_cell`) and decoded with the *dataset's*
:class:`~cellrlhf.cell2text.decoder.ExpressionDecoder`. The control rows are the reference the
predicted change is taken against: by default the real control cells of the test split passed
through encode -> decode with the same decoder (see ``docs/perturbation-rl-findings.md``); or,
with ``reference="model"``, the model's own answers to the control twin of each prompt (the same
prompt about ``<pert> <control> </pert>``, which the dataset teaches), so that what all the
model's answers share (cell length, rank calibration) cancels in its change as it does in real
data.

A policy is sampled the way it was trained (under the cell grammar when it was trained so; see
:mod:`cellrlhf.evaluation.prediction_sampling`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cellrlhf.evaluation.prediction_sampling import (
    PredictionRun,
    SampledAnswers,
    prompt_rows,
    sample_prompts,
    sampling_settings,
    sentence_settings,
)

__all__ = [
    "PREDICTION_KEY",
    "PROMPT_SPLITS",
    "RL_TEST_COLUMNS",
    "encode_kwargs",
    "load_test_prompts",
    "predict",
]

logger = logging.getLogger(__name__)

PREDICTION_KEY = "cellrlhf_prediction"
RL_TEST_COLUMNS = ("prompt", "perturbation", "cell_context", "split_kind")
CONTROL_KIND = "control"
# the prompt splits an evaluation can answer (validation: for choosing settings; train: the
# fit check, baselines leave each perturbation out)
PROMPT_SPLITS = ("test", "validation", "train")


def load_test_prompts(
    dataset_dir: str | os.PathLike, *, max_prompts: int | None, seed: int, split: str = "test"
):
    """The ``rl/<split>`` rows to evaluate (``test``; ``validation`` to choose settings on;
    ``train`` for the fit check): all, or a seeded subsample of ``max_prompts``.

    Returns
    -------
    (rows, indices): the ``datasets.Dataset`` of the chosen rows and their row indices in
    ``rl/<split>``.
    """
    if split not in PROMPT_SPLITS:
        raise ValueError(f"split={split!r}; choose one of {PROMPT_SPLITS}.")
    from cellrlhf.data.layout import open_dataset_dir

    rl_dir, rl = Path(dataset_dir) / "rl", open_dataset_dir(dataset_dir).rl
    if rl is None:
        raise FileNotFoundError(
            f"{dataset_dir} has no rl/ part: build the dataset with rl.enabled (the held-out "
            "prompts are its test split)."
        )
    if split not in rl:
        raise ValueError(f"{rl_dir} has no {split} split (splits: {list(rl)}).")
    test = rl[split]
    missing = [c for c in RL_TEST_COLUMNS if c not in test.column_names]
    if missing:
        raise ValueError(f"{rl_dir}/{split} lacks column(s) {missing}; rebuild the dataset.")
    if len(test) == 0:
        raise ValueError(
            f"{rl_dir}/{split} is empty: no held-out perturbation had enough cells (see the "
            "manifest's split.rl_skipped_groups)."
        )
    indices = np.arange(len(test))
    if max_prompts is not None and max_prompts < len(test):
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(len(test), size=max_prompts, replace=False))
    return test.select(indices.tolist()), indices


def _check_real_split(real, split: str) -> None:
    """The real cells handed in are those of the prompts' split (their controls differ)."""
    from cellrlhf.evaluation.real_data import REAL_CELLS_KEY

    recorded = ((getattr(real, "uns", None) or {}).get(REAL_CELLS_KEY) or {}).get("params", {})
    if "split" in recorded and recorded["split"] != split:
        raise ValueError(
            f"the real cells given are the {recorded['split']!r} split's but the prompts are "
            f"{split!r}: read them with real_cells(dataset_dir, {split!r})."
        )


def _check_same_genes(model_vocab, decoder, model_dir: Path, dataset_dir: Path) -> None:
    if list(model_vocab.genes) != list(decoder.vocab.genes):
        raise ValueError(
            f"{model_dir} was trained on a different gene vocabulary than {dataset_dir} "
            f"({len(model_vocab)} vs {len(decoder.vocab)} genes): evaluate a model on the dataset "
            "it was trained on."
        )


def encode_kwargs(manifest: dict) -> dict:
    """``encode`` arguments that write cells as the dataset build wrote them."""
    sentences = sentence_settings(manifest)
    return {"top_k": sentences.get("top_k"), "seed": int(sentences.get("seed", 0))}


REFERENCES = ("auto", "model", "real")


def _reference(reference: str, rows, manifest: dict) -> tuple[str, str]:
    """``"model"`` or ``"real"``, and why (recorded in ``params``).

    ``"auto"`` takes the model's own control answers when the dataset taught them (its
    ``perturbation_response`` task has ``control_fraction > 0``) and its RL rows carry the
    control twin of every prompt; otherwise the real decoded control.
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference={reference!r}; choose one of {REFERENCES}.")
    has_twins = "control_prompt" in rows.column_names
    if reference == "model" and not has_twins:
        raise ValueError(
            "reference='model' needs the control twin of each prompt (rl column "
            "`control_prompt`): rebuild the dataset with this version of cellrlhf, or use "
            "reference='real'."
        )
    if reference != "auto":
        return reference, "argument"
    tasks = ((manifest.get("config") or {}).get("sft") or {}).get("tasks") or {}
    response = tasks.get("perturbation_response") or {}
    taught = response.get("enabled", True) and float(response.get("control_fraction", 0)) > 0
    if taught and has_twins:
        return "model", "dataset teaches control answers"
    return "real", "dataset does not teach control answers"


def _control_obs(perturbation, cell_context, sentences, valid, n_genes, index) -> pd.DataFrame:
    """``obs`` of control rows: no prompt, and (decoded or sampled) taken as closed and ended."""
    n = len(index)
    return pd.DataFrame(
        {
            "perturbation": perturbation,
            "cell_context": cell_context,
            "split_kind": [CONTROL_KIND] * n,
            "prompt_index": np.full(n, -1, dtype=np.int64),
            "cell_sentence": sentences,
            "valid": valid,
            "valid_gene_fraction": np.ones(n, dtype=np.float32),
            "n_genes": n_genes,
            "closed": np.ones(n, dtype=bool),
            "finished": np.ones(n, dtype=bool),
        },
        index=index,
    )


def _model_controls(run: PredictionRun, n_cells: int):
    """The model's own answers to the control twins of the prompts, ``n_cells`` per context.

    Returns
    -------
    (X, obs, validity): decoded cells, their ``obs`` rows (controls) and the validity figures
    of these answers.
    """
    from cellrlhf.data.schema import CONTROL_LABEL

    twins: dict[str, list] = {}
    for ctx, twin in zip(run.rows["cell_context"], run.rows["control_prompt"], strict=True):
        if twin not in twins.setdefault(str(ctx), []):
            twins[str(ctx)].append(twin)
    prompts, contexts = [], []
    for ctx, options in twins.items():
        prompts += [options[k % len(options)] for k in range(n_cells)]
        contexts += [ctx] * n_cells
    answers = run.answers(prompts, run.settings, "control")
    names = [f"model_control_{run.name}_{k}" for k in range(len(prompts))]
    obs = _control_obs(
        CONTROL_LABEL, contexts, answers.sentences, answers.valid, answers.n_genes, names
    )
    return answers.X, obs, answers.validity


def _decoded_controls(real_test, run: PredictionRun):
    """Real test-split control cells of the prompts' contexts through encode -> decode.

    Returns
    -------
    (X, obs): decoded cells and their ``obs`` rows (controls).
    """
    import scipy.sparse as sp

    from cellrlhf.data.schema import CONTROL_LABEL
    from cellrlhf.evaluation.baselines import representation_ceiling

    contexts = sorted(set(run.rows["cell_context"]))
    obs = real_test.obs
    mask = (obs["perturbation"].astype(str) == CONTROL_LABEL).to_numpy()
    mask &= obs["cell_context"].astype(str).isin(contexts).to_numpy()
    if not mask.any():
        raise ValueError(
            f"the real test cells have no control cells in {contexts}; pass the output of "
            "real_cells(dataset_dir, 'test') (controls included)."
        )
    controls = real_test[mask].copy()
    X = representation_ceiling(
        controls, run.decoder, pert_col="perturbation", **encode_kwargs(run.manifest)
    ).X
    n = X.shape[0]
    obs = _control_obs(
        controls.obs["perturbation"].astype(str).to_numpy(),
        controls.obs["cell_context"].astype(str).to_numpy(),
        [""] * n,
        np.ones(n, dtype=bool),
        np.diff(sp.csr_matrix(X).indptr).astype(np.int64),
        [f"decoded_control_{c}" for c in controls.obs.index],
    )
    return X, obs


def _generated_obs(run: PredictionRun, answers: SampledAnswers) -> pd.DataFrame:
    """``obs`` of the sampled cells: their prompt's row of ``rl/test`` and each answer's checks."""
    cells_per_prompt = run.cells_per_prompt
    prompt_of = prompt_rows(run.rows, cells_per_prompt)

    def pick(column: str) -> np.ndarray:
        return np.asarray(run.rows[column], dtype=object)[prompt_of]

    index = run.indices[prompt_of]
    return pd.DataFrame(
        {
            "perturbation": pick("perturbation"),
            "cell_context": pick("cell_context"),
            "split_kind": pick("split_kind"),
            "prompt_index": index.astype(np.int64),
            "cell_sentence": answers.sentences,
            "valid": answers.valid,
            "valid_gene_fraction": answers.valid_gene_fraction,
            "n_genes": answers.n_genes,
            "closed": answers.closed,
            "finished": answers.finished,
        },
        index=[f"{run.name}_p{p}_c{k % cells_per_prompt}" for k, p in enumerate(index)],
    )


def _prediction_anndata(run: PredictionRun, answers: SampledAnswers, control_X, control_obs):
    """The sampled cells, then the control rows, as one AnnData (float32 CSR)."""
    import anndata as ad
    import scipy.sparse as sp

    obs = pd.concat([_generated_obs(run, answers), control_obs])
    for column in ("perturbation", "cell_context", "split_kind"):
        obs[column] = obs[column].astype(str)
    X = sp.vstack([sp.csr_matrix(answers.X), sp.csr_matrix(control_X)], format="csr")
    return ad.AnnData(
        X=X.astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(list(run.decoder.vocab.genes))),
    )


def _uns(run: PredictionRun, answers: SampledAnswers, split: str) -> dict:
    """``uns["cellrlhf_prediction"]``: what was sampled, how and from what (``params``), the
    answers' ``validity`` and ``diversity``."""
    from cellrlhf.reward.diversity import distinct_fraction

    settings, manifest, reference = run.settings, run.manifest, run.reference
    per_prompt = distinct_fraction(answers.sentences, prompt_rows(run.rows, run.cells_per_prompt))
    params = {
        "model": run.name,
        "model_dir": str(run.model_dir),
        "model_stage": run.model_stage,
        "dataset_dir": str(run.dataset_dir),
        "dataset_fingerprint": str(manifest.get("fingerprint", "")),
        "simulated": bool(manifest.get("simulated")),
        "cells_per_prompt": int(run.cells_per_prompt),
        "n_prompts": len(run.rows),
        "prompt_indices": run.indices.astype(np.int64),
        "seed": int(settings.seed),
        "temperature": float(settings.temperature),
        "top_k": 0,
        "top_p": 1.0,
        "max_new_tokens": int(settings.max_new_tokens),
        "constrain_cells": settings.constrain_cells,
        "constrain_cells_source": run.constrained_by,
        "batch_size": int(run.batch_size),
        "reference": reference,
        "reference_source": run.reference_by,
        "control": (
            "the model's own answers to the control twin of each prompt"
            if reference == "model"
            else f"real {split}-split control cells, encode -> decode (dataset decoder)"
        ),
        "split": split,
    }
    diversity = {
        "distinct_fraction": float(distinct_fraction(answers.sentences)[0]),
        "distinct_fraction_per_prompt": float(np.mean(per_prompt)),
    }
    return {"params": params, "validity": answers.validity, "diversity": diversity}


def predict(
    model_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    *,
    real_test=None,
    cells_per_prompt: int = 512,
    max_prompts: int | None = None,
    seed: int = 0,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    device_map=None,
    dtype=None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    name: str | None = None,
    progress: bool = True,
    constrain_cells: bool | None = None,
    unconstrained_validity_cells: int = 16,
    reference: str = "real",
    reference_cells: int | None = None,
    split: str = "test",
):
    """Sample a model's cells for the dataset's held-out prompts and decode them.

    Parameters
    ----------
    model_dir
        A saved model directory (``cellrlhf sft`` / ``ppo`` / ``grpo`` output).
    dataset_dir
        The built dataset the model was trained on (its ``rl/test`` prompts and decoder).
    real_test
        The real test cells (:func:`~cellrlhf.evaluation.real_data.real_cells`); read from the
        source when ``None`` (then ``data_dir`` / ``cache_dir`` locate it).
    cells_per_prompt
        Answers sampled per prompt.
    max_prompts
        Seeded subsample of the prompts (``None``: all).
    seed
        Seed of the subsample and the sampling (forked RNG: global state is untouched).
    temperature
        Sampling temperature (> 0; plain sampling, no top-k / top-p).
    max_new_tokens
        Answer budget (default: the dataset's sentence length + 8 markup tokens).
    batch_size
        Answers per ``generate`` call.
    device_map, dtype
        Placement and precision, handed to transformers / accelerate.
    name
        Label of the model in logs and ``uns`` (default: the directory name).
    progress
        Progress bar over generation batches.
    constrain_cells
        Sample under the single-cell answer grammar (each answer one valid cell, then the end
        token). ``None``: as the model was trained (``constrain_cells`` of its
        ``cellrlhf.json``; models without it, e.g. SFT, unconstrained).
    unconstrained_validity_cells
        When constrained, also sample this many answers per prompt (at most
        ``cells_per_prompt``) without the grammar, for the model's own validity
        (``validity["unconstrained"]``); ``0`` skips it.
    reference
        What the model's predicted change is taken against. ``"model"``: the model's own
        answers to the control twin of each prompt (the same prompt with ``<pert> <control>
        </pert>``), so that biases shared by all its answers (cell length, rank calibration)
        cancel in the change, as they do in real data; ``"real"`` (default): the real test
        control cells through encode -> decode; ``"auto"``: ``"model"`` when the dataset taught
        control answers (``perturbation_response`` ``control_fraction > 0``), else ``"real"``.
        The default is ``"real"`` because on the demo models the own reference scored lower
        (BENCHMARKS, SFT diagnosis: the model does not yet tell control from perturbed cells).
    reference_cells
        Control answers sampled per cell context with ``reference="model"`` (default: twice
        ``cells_per_prompt``).
    split
        The prompts answered: ``"test"`` (default), ``"validation"`` (to choose sampling
        settings without touching test) or ``"train"`` (perturbations the model was trained on:
        the fit check); ``real_test`` must be the real cells of that split.

    Returns
    -------
    AnnData of decoded cells (dataset vocabulary as ``var_names``, float32 CSR): generated cells
    with ``obs`` ``perturbation``, ``cell_context``, ``split_kind``, ``prompt_index`` (row of
    ``rl/test``), ``cell_sentence``, ``valid`` (a closed ``<cell> ... </cell>`` answer of known,
    distinct genes, nothing else in the answer, ended), ``valid_gene_fraction``, ``n_genes``, ``closed``, ``finished``; then the
    decoded control cells (``split_kind="control"``, ``prompt_index=-1``).
    ``uns["cellrlhf_prediction"]`` holds ``params`` (``constrain_cells`` and its source:
    ``"cellrlhf.json"`` or ``"argument"``), ``validity`` (decoder report, marked / unclosed /
    finished fractions, ``constrained``; when constrained, ``unconstrained``: the same figures
    of the unconstrained sample) and ``diversity`` (distinct-sentence fractions).
    """
    from cellrlhf.data.layout import open_dataset_dir
    from cellrlhf.sampling import Sampler
    from cellrlhf.sft.model_dir import load_model_dir

    model_dir, dataset_dir = Path(model_dir), Path(dataset_dir)
    name = name or model_dir.name
    built = open_dataset_dir(dataset_dir)
    rows, indices = load_test_prompts(dataset_dir, max_prompts=max_prompts, seed=seed, split=split)
    reference, reference_by = _reference(reference, rows, built.manifest)
    if real_test is None and reference == "real":
        from cellrlhf.evaluation.real_data import real_cells

        real_test = real_cells(
            dataset_dir, split, data_dir=data_dir, cache_dir=cache_dir, progress=progress
        )
    _check_real_split(real_test, split)

    loaded = load_model_dir(model_dir, device_map=device_map, dtype=dtype)
    decoder = built.decoder()
    _check_same_genes(loaded.vocab, decoder, model_dir, dataset_dir)
    settings, constrained_by = sampling_settings(
        loaded, built.manifest, name, max_new_tokens, temperature, seed, constrain_cells
    )
    run = PredictionRun(
        name=name,
        model_dir=model_dir,
        dataset_dir=dataset_dir,
        manifest=built.manifest,
        model_stage=str(loaded.info.get("stage", "")),
        generator=Sampler(loaded.model, loaded.tokenizer, cell_genes=loaded.vocab),
        decoder=decoder,
        rows=rows,
        indices=indices,
        cells_per_prompt=cells_per_prompt,
        settings=settings,
        constrained_by=constrained_by,
        reference=reference,
        reference_by=reference_by,
        batch_size=batch_size,
        progress=progress,
    )
    answers = sample_prompts(run, unconstrained_validity_cells)
    if reference == "model":
        n_reference = int(reference_cells or 2 * cells_per_prompt)
        control_X, control_obs, answers.validity["reference"] = _model_controls(run, n_reference)
    else:
        control_X, control_obs = _decoded_controls(real_test, run)
    result = _prediction_anndata(run, answers, control_X, control_obs)
    result.uns[PREDICTION_KEY] = _uns(run, answers, split)
    logger.info(
        "%s: %d cells, valid %.1f%%, distinct per prompt %.2f",
        name,
        len(answers.sentences),
        100 * float(answers.valid.mean()),
        result.uns[PREDICTION_KEY]["diversity"]["distinct_fraction_per_prompt"],
    )
    return result
