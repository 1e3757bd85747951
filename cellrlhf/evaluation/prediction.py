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

A policy is sampled the way it was trained: an RL policy trained with ``constrain_cells`` (its
``cellrlhf.json`` says so) is sampled under the same single-cell answer grammar
(:class:`~cellrlhf.cell2text.sentence_constraints.CellSentenceConstraint` with
``single_cell_answer=True``), every other model unconstrained, unless ``constrain_cells`` says
otherwise. Under the grammar every finished answer is valid by construction, so a constrained
model's own validity is measured too, on a smaller unconstrained sample
(``validity["unconstrained"]``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["PREDICTION_KEY", "RL_TEST_COLUMNS", "predict", "load_test_prompts"]

logger = logging.getLogger(__name__)

PREDICTION_KEY = "cellrlhf_prediction"
RL_TEST_COLUMNS = ("prompt", "perturbation", "cell_context", "split_kind")
CONTROL_KIND = "control"


def load_test_prompts(dataset_dir: str | os.PathLike, *, max_prompts: int | None, seed: int):
    """The ``rl/test`` rows to evaluate: all, or a seeded subsample of ``max_prompts``.

    Returns
    -------
    (rows, indices): the ``datasets.Dataset`` of the chosen rows and their row indices in
    ``rl/test``.
    """
    from datasets import load_from_disk

    rl_dir = Path(dataset_dir) / "rl"
    if not rl_dir.exists():
        raise FileNotFoundError(
            f"{dataset_dir} has no rl/ part: build the dataset with rl.enabled (the held-out "
            "prompts are its test split)."
        )
    rl = load_from_disk(str(rl_dir))
    if "test" not in rl:
        raise ValueError(f"{rl_dir} has no test split (splits: {list(rl)}).")
    test = rl["test"]
    missing = [c for c in RL_TEST_COLUMNS if c not in test.column_names]
    if missing:
        raise ValueError(f"{rl_dir}/test lacks column(s) {missing}; rebuild the dataset.")
    if len(test) == 0:
        raise ValueError(
            f"{rl_dir}/test is empty: no held-out perturbation had enough cells (see the "
            "manifest's split.rl_skipped_groups)."
        )
    indices = np.arange(len(test))
    if max_prompts is not None and max_prompts < len(test):
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(len(test), size=max_prompts, replace=False))
    return test.select(indices.tolist()), indices


def _answer_budget(manifest: dict, info: dict, n_genes: int) -> int:
    """Sentence length + markup tokens (genes-as-text spends several tokens per gene)."""
    top_k = ((manifest.get("config") or {}).get("sentences") or {}).get("top_k") or n_genes
    per_gene = 4 if info.get("tokenizer_mode") == "genes_as_text" else 1
    return int(top_k) * per_gene + 8


def _check_same_genes(model_vocab, decoder, model_dir: Path, dataset_dir: Path) -> None:
    if list(model_vocab.genes) != list(decoder.vocab.genes):
        raise ValueError(
            f"{model_dir} was trained on a different gene vocabulary than {dataset_dir} "
            f"({len(model_vocab)} vs {len(decoder.vocab)} genes): evaluate a model on the dataset "
            "it was trained on."
        )


def _decoded_controls(real_test, decoder, contexts: list[str], manifest: dict):
    """Real test-split control cells of ``contexts`` through encode -> decode."""
    from cellrlhf.data.schema import CONTROL_LABEL
    from cellrlhf.evaluation.baselines import representation_ceiling

    obs = real_test.obs
    mask = (obs["perturbation"].astype(str) == CONTROL_LABEL).to_numpy()
    mask &= obs["cell_context"].astype(str).isin(contexts).to_numpy()
    if not mask.any():
        raise ValueError(
            f"the real test cells have no control cells in {contexts}; pass the output of "
            "real_cells(dataset_dir, 'test') (controls included)."
        )
    sentences = (manifest.get("config") or {}).get("sentences") or {}
    controls = real_test[mask].copy()
    decoded = representation_ceiling(
        controls,
        decoder,
        pert_col="perturbation",
        top_k=sentences.get("top_k"),
        seed=int(sentences.get("seed", 0)),
    )
    return decoded.X, controls.obs


def _validity(report, extracted, finished: np.ndarray) -> dict:
    found = np.asarray([e.found for e in extracted], dtype=bool)
    closed = np.asarray([e.closed for e in extracted], dtype=bool)
    out = {k: v for k, v in report.to_dict().items() if not isinstance(v, (list, dict))}
    out.update(
        marked_fraction=float(found.mean()) if len(found) else 0.0,
        unclosed_fraction=float((found & ~closed).sum() / max(found.sum(), 1)),
        finished_fraction=float(finished.mean()) if len(finished) else 0.0,
    )
    return out


def _sample(generator, prompts: list[str], settings, *, batch_size, progress, desc, decoder):
    """Answers of ``prompts`` under ``settings``: extracted cells, decoder report, flags."""
    from cellrlhf.cell2text.markup import extract_cell
    from cellrlhf.ppo.sample_checks import fully_valid_cells

    completions = generator.generate(
        prompts, settings, batch_size=batch_size, progress=progress, desc=desc
    )
    extracted = [extract_cell(c.text) for c in completions]
    X, report = decoder.decode([e.sentence for e in extracted])
    finished = np.asarray([c.finished for c in completions], dtype=bool)
    texts = [c.text for c in completions]
    # the same definition as RL's step metric: the answers' own report (markup read)
    valid = fully_valid_cells(decoder.decode(texts)[1], texts, finished)
    valid &= np.asarray(report.n_truncated) == 0
    validity = {**_validity(report, extracted, finished), "valid_cell_fraction": _mean(valid)}
    return extracted, X, report, finished, valid, validity


def _mean(flags: np.ndarray) -> float:
    return float(np.mean(flags)) if len(flags) else 0.0


def _constrained(constrain_cells: bool | None, info: dict, name: str) -> tuple[bool, str]:
    """Whether to sample under the cell grammar, and why (recorded in ``params``)."""
    if constrain_cells is not None:
        return bool(constrain_cells), "argument"
    trained = bool(info.get("constrain_cells", False))
    if trained:
        logger.info(
            "%s was trained as a constrained policy (constrain_cells in its cellrlhf.json): "
            "sampled under the same grammar (constrain_cells=False to see its own samples)",
            name,
        )
    return trained, "cellrlhf.json"


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


def _model_controls(generator, rows, settings, n_cells: int, sample: dict, name: str):
    """The model's own answers to the control twins of ``rows``, ``n_cells`` per context.

    Returns
    -------
    (X, obs, validity): decoded cells, their ``perturbation`` / ``cell_context`` (controls),
    and the validity figures of these answers.
    """
    twins: dict[str, list] = {}
    for ctx, twin in zip(rows["cell_context"], rows["control_prompt"], strict=True):
        if twin not in twins.setdefault(str(ctx), []):
            twins[str(ctx)].append(twin)
    prompts, contexts = [], []
    for ctx, options in twins.items():
        prompts += [options[k % len(options)] for k in range(n_cells)]
        contexts += [ctx] * n_cells
    extracted, X, report, _, valid, validity = _sample(
        generator, prompts, settings, desc=f"control {name}", **sample
    )
    from cellrlhf.data.schema import CONTROL_LABEL

    obs = pd.DataFrame({"perturbation": CONTROL_LABEL, "cell_context": contexts})
    obs["valid"] = valid
    obs["n_genes"] = report.n_valid.astype(np.int64)
    obs["cell_sentence"] = [e.sentence for e in extracted]
    return X, obs, validity


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
    import anndata as ad
    import scipy.sparse as sp

    from cellrlhf.data.layout import load_built_dataset
    from cellrlhf.reward.diversity import distinct_fraction
    from cellrlhf.sampling import GenerationSettings, Sampler
    from cellrlhf.sft.model_dir import load_model_dir

    model_dir, dataset_dir = Path(model_dir), Path(dataset_dir)
    name = name or model_dir.name
    built = load_built_dataset(dataset_dir)
    decoder = built.decoder
    rows, indices = load_test_prompts(dataset_dir, max_prompts=max_prompts, seed=seed)
    contexts = sorted(set(rows["cell_context"]))
    reference, reference_by = _reference(reference, rows, built.manifest)
    if real_test is None and reference == "real":
        from cellrlhf.evaluation.real_data import real_cells

        real_test = real_cells(
            dataset_dir, "test", data_dir=data_dir, cache_dir=cache_dir, progress=progress
        )

    loaded = load_model_dir(model_dir, device_map=device_map, dtype=dtype)
    _check_same_genes(loaded.vocab, decoder, model_dir, dataset_dir)
    budget = max_new_tokens or _answer_budget(built.manifest, loaded.info, len(decoder.vocab))
    constrained, constrained_by = _constrained(constrain_cells, loaded.info, name)
    settings = GenerationSettings(
        max_new_tokens=budget,
        temperature=temperature,
        top_p=1.0,
        top_k=0,
        seed=seed,
        constrain_cells=constrained,
        single_cell_answer=constrained,
    )
    generator = Sampler(loaded.model, loaded.tokenizer, cell_genes=loaded.vocab)
    prompt_of = np.repeat(np.arange(len(rows)), cells_per_prompt)
    prompts = list(rows["prompt"])
    logger.info(
        "%s: sampling %d cells for each of %d held-out prompts (temperature %.2f, %d tokens%s)",
        name,
        cells_per_prompt,
        len(rows),
        temperature,
        budget,
        ", constrained to one valid cell" if constrained else "",
    )
    sample = dict(batch_size=batch_size, progress=progress, decoder=decoder)
    extracted, X, report, finished, valid, validity = _sample(
        generator, [prompts[i] for i in prompt_of], settings, desc=f"sample {name}", **sample
    )
    sentences = [e.sentence for e in extracted]
    closed = np.asarray([e.closed for e in extracted], dtype=bool)
    validity["constrained"] = constrained
    n_free = min(int(unconstrained_validity_cells), cells_per_prompt)
    if constrained and n_free > 0:
        free = replace(settings, constrain_cells=False, single_cell_answer=False)
        free_of = np.repeat(np.arange(len(rows)), n_free)
        validity["unconstrained"] = _sample(
            generator, [prompts[i] for i in free_of], free, desc=f"unconstrained {name}", **sample
        )[-1]
        validity["unconstrained"]["cells_per_prompt"] = n_free

    if reference == "model":
        n_ref = int(reference_cells or 2 * cells_per_prompt)
        control_X, control_obs, validity["reference"] = _model_controls(
            generator, rows, settings, n_ref, sample, name
        )
        control_valid = control_obs["valid"].to_numpy(dtype=bool)
        control_genes = control_obs["n_genes"].to_numpy(dtype=np.int64)
        control_names = [f"model_control_{name}_{k}" for k in range(len(control_obs))]
        control_sentences = control_obs["cell_sentence"].tolist()
    else:
        control_X, control_obs = _decoded_controls(real_test, decoder, contexts, built.manifest)
        control_valid = np.ones(control_X.shape[0], dtype=bool)
        control_genes = np.diff(sp.csr_matrix(control_X).indptr).astype(np.int64)
        control_names = [f"decoded_control_{c}" for c in control_obs.index]
        control_sentences = [""] * control_X.shape[0]

    def pick(column: str) -> np.ndarray:
        return np.asarray(rows[column], dtype=object)[prompt_of]

    generated = pd.DataFrame(
        {
            "perturbation": pick("perturbation"),
            "cell_context": pick("cell_context"),
            "split_kind": pick("split_kind"),
            "prompt_index": indices[prompt_of].astype(np.int64),
            "cell_sentence": sentences,
            "valid": valid,
            "valid_gene_fraction": report.valid_fractions.astype(np.float32),
            "n_genes": report.n_valid.astype(np.int64),
            "closed": closed,
            "finished": finished,
        },
        index=[f"{name}_p{indices[p]}_c{k % cells_per_prompt}" for k, p in enumerate(prompt_of)],
    )
    n_ctrl = control_X.shape[0]
    controls = pd.DataFrame(
        {
            "perturbation": control_obs["perturbation"].astype(str).to_numpy(),
            "cell_context": control_obs["cell_context"].astype(str).to_numpy(),
            "split_kind": [CONTROL_KIND] * n_ctrl,
            "prompt_index": np.full(n_ctrl, -1, dtype=np.int64),
            "cell_sentence": control_sentences,
            "valid": control_valid,
            "valid_gene_fraction": np.ones(n_ctrl, dtype=np.float32),
            "n_genes": control_genes,
            "closed": np.ones(n_ctrl, dtype=bool),
            "finished": np.ones(n_ctrl, dtype=bool),
        },
        index=control_names,
    )
    obs = pd.concat([generated, controls])
    for column in ("perturbation", "cell_context", "split_kind"):
        obs[column] = obs[column].astype(str)
    per_prompt = distinct_fraction(sentences, prompt_of)
    result = ad.AnnData(
        X=sp.vstack([sp.csr_matrix(X), sp.csr_matrix(control_X)], format="csr").astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(list(decoder.vocab.genes))),
    )
    result.uns[PREDICTION_KEY] = {
        "params": {
            "model": name,
            "model_dir": str(model_dir),
            "model_stage": str(loaded.info.get("stage", "")),
            "dataset_dir": str(dataset_dir),
            "dataset_fingerprint": str(built.manifest.get("fingerprint", "")),
            "simulated": bool(built.manifest.get("simulated")),
            "cells_per_prompt": int(cells_per_prompt),
            "n_prompts": len(rows),
            "prompt_indices": indices.astype(np.int64),
            "seed": int(seed),
            "temperature": float(temperature),
            "top_k": 0,
            "top_p": 1.0,
            "max_new_tokens": int(budget),
            "constrain_cells": constrained,
            "constrain_cells_source": constrained_by,
            "batch_size": int(batch_size),
            "reference": reference,
            "reference_source": reference_by,
            "control": (
                "the model's own answers to the control twin of each prompt"
                if reference == "model"
                else "real test-split control cells, encode -> decode (dataset decoder)"
            ),
        },
        "validity": validity,
        "diversity": {
            "distinct_fraction": float(distinct_fraction(sentences)[0]),
            "distinct_fraction_per_prompt": float(np.mean(per_prompt)),
        },
    }
    logger.info(
        "%s: %d cells, valid %.1f%%, distinct per prompt %.2f",
        name,
        len(sentences),
        100 * float(valid.mean()),
        float(np.mean(per_prompt)),
    )
    return result
