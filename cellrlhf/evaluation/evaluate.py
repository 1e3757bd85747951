"""Models, baselines and ceilings on the held-out perturbations, per cell context, in one table.

For every model: :func:`~cellrlhf.evaluation.prediction.predict` on the RL test prompts. Then,
per cell context (each has its own control), :func:`cellrlhf.evaluation.comparison.compare_methods`
scores the models next to the baselines learned from the training cells of that context and the
ceilings (split-half real vs real; the dataset decoder's representation ceiling), all against
the same real test cells: the perturbations that were prompted, plus the context's control.

The output directory (tables, plots, predictions, manifest) is laid out and read by
:mod:`cellrlhf.evaluation.eval_dir`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cellrlhf.evaluation.eval_dir import (
    BAR_PLOT_FILENAME,
    EVALUATION_FORMAT,
    ID_COLUMNS,
    MANIFEST_FILENAME,
    PREDICTIONS_DIRNAME,
    VALIDITY_PLOT_FILENAME,
    context_dir,
    prediction_path,
    scatter_path,
    table_paths,
)
from cellrlhf.evaluation.run_report import (
    ALL_CONTEXTS,
    MODEL_COLUMNS,
    reference_of,
    run_markdown,
    title,
)
from cellrlhf.evaluation.settings import EvalSettings
from cellrlhf.run_environment import run_environment

__all__ = [
    "EvaluationResult",
    "evaluate_models",
    "identical_models",
    "method_type",
    "MODEL_COLUMNS",
    "RELIABILITY_WARNING",
    "sampling_warnings",
]

logger = logging.getLogger(__name__)

REPRESENTATION = "representation_decoder"


@dataclass
class EvaluationResult:
    """What :func:`evaluate_models` wrote and computed."""

    out_dir: Path
    metrics: pd.DataFrame
    summary: pd.DataFrame
    validity: pd.DataFrame
    paths: dict[str, Path] = field(default_factory=dict)
    evaluations: dict[str, dict] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)


def method_type(method: str, models: set[str] | frozenset[str]) -> str:
    """``"model"``, ``"ceiling"`` (split-half, representation) or ``"baseline"``."""
    if method in models:
        return "model"
    if method.startswith(("split_half", "representation_")):
        return "ceiling"
    return "baseline"


def _subset(adata, mask):
    return adata[np.asarray(mask, dtype=bool)].copy()


def _validity_table(predictions: Mapping[str, object]) -> pd.DataFrame:
    """Per model and context: valid-gene, valid-cell and distinct-sentence fractions."""
    from cellrlhf.evaluation.prediction import CONTROL_KIND
    from cellrlhf.reward.diversity import distinct_fraction

    rows = []
    for name, pred in predictions.items():
        obs = pred.obs[pred.obs["split_kind"] != CONTROL_KIND]
        for ctx, part in [(ALL_CONTEXTS, obs), *obs.groupby("cell_context", observed=True)]:
            genes = part["n_genes"].to_numpy(dtype=float)
            fractions = part["valid_gene_fraction"].to_numpy(dtype=float)
            words = np.where(fractions > 0, genes / np.maximum(fractions, 1e-12), 0.0)
            codes = part["prompt_index"].to_numpy()
            _, codes = np.unique(codes, return_inverse=True)
            rows.append(
                {
                    "model": name,
                    "cell_context": str(ctx),
                    "n_cells": len(part),
                    "valid_fraction": float(genes.sum() / max(words.sum(), 1.0)),
                    "valid_cell_fraction": float(part["valid"].mean()),
                    "closed_fraction": float(part["closed"].mean()),
                    "distinct_sentence_fraction": float(
                        np.mean(distinct_fraction(part["cell_sentence"].tolist(), codes))
                    ),
                    "mean_genes": float(genes.mean()) if len(genes) else 0.0,
                }
            )
    return pd.DataFrame(rows)


def _prompted(dataset_dir, settings: EvalSettings) -> dict[str, set[str]]:
    """Context -> the held-out perturbations prompted (the ``rl/test`` rows evaluated)."""
    from cellrlhf.evaluation.prediction import load_test_prompts

    rows, _ = load_test_prompts(
        dataset_dir, max_prompts=settings.max_prompts, seed=settings.seed, split=settings.split
    )
    prompted: dict[str, set[str]] = {}
    for ctx, pert in zip(rows["cell_context"], rows["perturbation"], strict=True):
        prompted.setdefault(str(ctx), set()).add(str(pert))
    return prompted


def _context_evaluation(
    ctx, prompted, real_test, real_train, predictions, decoder, settings, manifest
):
    from cellrlhf.data.schema import CONTROL_LABEL
    from cellrlhf.evaluation.comparison import compare_methods
    from cellrlhf.evaluation.prediction import encode_kwargs

    preds = {
        name: _subset(pred, pred.obs["cell_context"].astype(str) == ctx)
        for name, pred in predictions.items()
    }
    labels = real_test.obs["perturbation"].astype(str)
    in_ctx = real_test.obs["cell_context"].astype(str) == ctx
    real = _subset(real_test, in_ctx & (labels.isin(prompted) | (labels == CONTROL_LABEL)))
    if not (real.obs["perturbation"] == CONTROL_LABEL).any():
        logger.warning("context %s has no control cells in the test data; skipped", ctx)
        return None
    return compare_methods(
        real,
        predictions=preds,
        train=real_train,  # every context's: context_transfer learns from the others
        context=ctx,
        context_col="cell_context",
        baselines=settings.baselines,
        split_half_ceiling=settings.split_half_ceiling,
        decoders={"decoder": decoder} if settings.representation_ceiling else None,
        control=CONTROL_LABEL,
        seed=settings.seed,
        encode_kwargs=encode_kwargs(manifest),
        top_k=settings.top_k,
        de=settings.de,
        leave_one_out=settings.split == "train",
    )


def _summaries(evaluations: dict, models: set[str], validity: pd.DataFrame):
    from cellrlhf.evaluation.comparison import SPLIT_HALF
    from cellrlhf.evaluation.eval_report import (
        combine,
        not_applicable_table,
        summarize_methods,
        summary_table,
    )

    metrics = pd.concat(
        [combine(evals).assign(cell_context=ctx) for ctx, evals in evaluations.items()],
        ignore_index=True,
    )
    per_context = [
        summary_table(evals, spearman_brown_from=SPLIT_HALF).assign(cell_context=ctx)
        for ctx, evals in evaluations.items()
    ]
    # all contexts: means over every (context, perturbation), the ceiling at full depth too,
    # and what each baseline does not apply to in any context
    overall = summarize_methods(
        metrics.drop(columns="cell_context"),
        not_applicable=pd.concat(
            [not_applicable_table(evals) for evals in evaluations.values()], ignore_index=True
        ),
        spearman_brown_from=SPLIT_HALF,
        methods=list(dict.fromkeys(m for evals in evaluations.values() for m in evals)),
    ).assign(cell_context=ALL_CONTEXTS)
    summary = pd.concat([overall, *per_context], ignore_index=True)
    summary.insert(1, "method_type", [method_type(m, models) for m in summary["method"]])
    lead = ["method", "method_type", "cell_context", "kind", "n_perturbations"]
    summary = summary[lead + [c for c in summary.columns if c not in lead]]
    if len(validity):
        extra = validity.rename(columns={"model": "method"})[
            ["method", "cell_context", *MODEL_COLUMNS]
        ]
        summary = summary.merge(extra, on=["method", "cell_context"], how="left")
    metrics.insert(1, "method_type", [method_type(m, models) for m in metrics["method"]])
    lead = list(ID_COLUMNS)
    metrics = metrics[lead + [c for c in metrics.columns if c not in lead]]
    return metrics, summary


# median split-half reliability of a model's predicted changes below which it is called noisy
RELIABILITY_WARNING = 0.8


def sampling_warnings(metrics: pd.DataFrame, models: Sequence[str], cells_per_prompt: int):
    """One sentence per model whose predictions are mostly sampling noise: the median split-half
    reliability over its perturbations, of the change from control (``sampling_reliability``)
    or of the perturbation-specific change (``sampling_reliability_specific``), is below
    :data:`RELIABILITY_WARNING`; the lower of the two is named."""
    columns = {
        "sampling_reliability": "predicted changes",
        "sampling_reliability_specific": "perturbation-specific changes",
    }
    out = []
    for name in models:
        rows = metrics.loc[metrics["method"] == name]
        medians = {
            column: float(rows[column].dropna().median())
            for column in columns
            if column in rows and rows[column].notna().any()
        }
        if not medians:
            continue
        column = min(medians, key=medians.get)
        if medians[column] < RELIABILITY_WARNING:
            out.append(
                f"{name}: its {columns[column]} are not reproducible between the two halves of "
                f"its sampled cells (median split-half reliability {medians[column]:.2f} < "
                f"{RELIABILITY_WARNING}); with {cells_per_prompt} cells per prompt its scores "
                "are partly sampling noise: raise --cells_per_prompt."
            )
    return out


def evaluate_models(
    dataset_dir: str | os.PathLike,
    models: Mapping[str, str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    settings: EvalSettings | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    skip_missing: bool = False,
    progress: bool = True,
) -> EvaluationResult:
    """Predict with every model and score models, baselines and ceilings per cell context.

    Parameters
    ----------
    dataset_dir
        The built dataset the models were trained on.
    models
        Model name -> saved model directory.
    out_dir
        Where the tables, plots, predictions and manifest are written (created).
    settings
        Sampling and scoring settings (:class:`~cellrlhf.evaluation.settings.EvalSettings`).
    data_dir, cache_dir
        Where the dataset's source data are found (``$CELLRLHF_DATA_DIR`` is searched too).
    skip_missing
        Leave out model directories that do not exist (with a warning) instead of raising.
    progress
        Progress bars.
    """
    from cellrlhf import __version__
    from cellrlhf.data.layout import open_dataset_dir
    from cellrlhf.evaluation.model_dirs import resolve_model_dirs
    from cellrlhf.evaluation.real_data import real_cells

    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.perf_counter()
    settings = settings or EvalSettings()
    model_dirs = resolve_model_dirs(models, skip_missing=skip_missing)
    out = Path(out_dir)
    (out / PREDICTIONS_DIRNAME).mkdir(parents=True, exist_ok=True)
    built = open_dataset_dir(dataset_dir)
    manifest = built.manifest
    kwargs = dict(data_dir=data_dir, cache_dir=cache_dir, progress=progress)
    train = real_cells(dataset_dir, "train", **kwargs)
    held = train if settings.split == "train" else real_cells(dataset_dir, settings.split, **kwargs)
    real = (held, train)
    predictions, paths = _predict_models(model_dirs, dataset_dir, real[0], out, settings, progress)
    evaluations = _score_contexts(built, real, predictions, settings, out)
    tables = _tables(evaluations, predictions, model_dirs, settings)
    paths.update(_write_tables(out, tables, manifest, settings, predictions))
    paths.update(_write_plots(out, tables, evaluations, list(predictions), settings))
    run_manifest = {
        "format": EVALUATION_FORMAT,
        "version": 1,
        "cellrlhf_version": __version__,
        "started": started,
        "seconds": round(time.perf_counter() - t0, 1),
        "simulated": bool(manifest.get("simulated")),
        "dataset": {
            "dir": str(dataset_dir),
            "name": manifest.get("name"),
            "fingerprint": manifest.get("fingerprint"),
            "source_sha256": (manifest.get("source") or {}).get("sha256"),
            "split_kind": (manifest.get("split") or {}).get("kind"),
        },
        "models": tables.records,
        "identical_models": tables.same,
        "sampling_warnings": tables.noisy,
        "skipped_models": sorted(set(models) - set(model_dirs)),
        "settings": settings.to_dict(),
        "seeds": {
            "sampling": settings.seed,
            "prompt_subsample": settings.seed,
            "split_half": settings.seed,
        },
        "cell_contexts": list(evaluations),
        "environment": run_environment(),
        "files": {k: str(p.relative_to(out)) for k, p in paths.items()},
    }
    paths["manifest"] = out / MANIFEST_FILENAME
    paths["manifest"].write_text(json.dumps(run_manifest, indent=1, default=_json_default))
    logger.info("evaluation written to %s in %.0f s", out, run_manifest["seconds"])
    return EvaluationResult(
        out, tables.metrics, tables.summary, tables.validity, paths, evaluations, run_manifest
    )


def _predict_models(model_dirs, dataset_dir, real_test, out: Path, settings, progress: bool):
    """Every model's prediction, written to ``predictions/<model>.h5ad``; and those paths."""
    from cellrlhf.evaluation.model_dirs import is_grammar_row, sampling_identity
    from cellrlhf.evaluation.prediction import predict

    predictions, paths, sampled = {}, {}, {}
    for name, path in model_dirs.items():
        # one directory named twice, or the same weights, tokenizer and grammar elsewhere (an
        # RL run that kept its starting or last policy): the same cells, sampled once
        identity = sampling_identity(path, name, settings.constrain_cells)
        key = identity or (Path(path).resolve(), is_grammar_row(name))
        same = sampled.get(key)
        if same is not None:
            logger.info(
                "%s samples what %s sampled (same weights and settings): reused", name, same
            )
            pred = _renamed(predictions[same], same, name, Path(path))
        else:
            pred = predict(
                path,
                dataset_dir,
                real_test=real_test,
                name=name,
                progress=progress,
                **settings.predict_kwargs(),
            )
            sampled[key] = name
        if identity is not None:  # the checksum the manifest records, read once
            sha = dict(identity[0])["model.safetensors"]
            pred.uns["cellrlhf_prediction"]["params"]["weights_sha256"] = sha
        paths[f"prediction_{name}"] = prediction_path(out, name)
        pred.write_h5ad(paths[f"prediction_{name}"])
        predictions[name] = pred
    return predictions, paths


def _renamed(pred, old: str, new: str, model_dir: Path):
    """A copy of ``pred`` (the cells sampled for model ``old``) labelled as model ``new`` of
    ``model_dir``."""
    import copy

    from cellrlhf.evaluation.model_dirs import probe_model_info

    out = pred.copy()
    out.obs_names = [
        f"{new}{name[len(old) :]}" if name.startswith(f"{old}_") else name for name in out.obs_names
    ]
    out.uns = copy.deepcopy(dict(pred.uns))
    params = out.uns["cellrlhf_prediction"]["params"]
    params["model"], params["model_dir"] = new, str(model_dir)
    params["model_stage"] = str(probe_model_info(model_dir).get("stage", ""))
    return out


def _score_contexts(built, real, predictions, settings, out: Path) -> dict:
    """Context -> method -> evaluation, for every context with test control cells; each
    context's report is written to ``contexts/<ctx>/``."""
    from cellrlhf.evaluation.eval_report import write_report

    real_test, real_train = real
    manifest, decoder = built.manifest, built.decoder()
    prompted = _prompted(built.path, settings)
    if not predictions:
        logger.info(
            "no model named: scoring the baselines and ceilings alone (how much a model could "
            "gain on these %d held-out prompts)",
            sum(map(len, prompted.values())),
        )
    evaluations: dict[str, dict] = {}
    for ctx in sorted(prompted):
        logger.info("scoring cell context %s", ctx)
        evals = _context_evaluation(
            ctx, prompted[ctx], real_test, real_train, predictions, decoder, settings, manifest
        )
        if evals is None:
            continue
        evaluations[ctx] = evals
        write_report(
            evals,
            context_dir(out, ctx),
            title=f"{title(settings.split)} in {ctx}",
            scatter_method=next(iter(predictions), None),
            spearman_brown_from="split_half",
            notes=["**SIMULATED DATA**"] if manifest.get("simulated") else (),
        )
    if not evaluations:
        raise ValueError("no cell context could be scored (no test control cells in any).")
    return evaluations


@dataclass
class _Tables:
    """The run's tables, the models' provenance and the warnings the report states."""

    metrics: pd.DataFrame
    summary: pd.DataFrame
    validity: pd.DataFrame
    records: dict[str, dict]
    same: list[list[str]]
    noisy: list[str]


def _tables(evaluations: dict, predictions: dict, model_dirs: Mapping, settings) -> _Tables:
    validity = _validity_table(predictions)
    records = {name: _model_record(model_dirs[name], pred) for name, pred in predictions.items()}
    metrics, summary = _summaries(evaluations, set(predictions), validity)
    noisy = sampling_warnings(metrics, list(predictions), settings.cells_per_prompt)
    for line in noisy:
        logger.warning(line)
    return _Tables(metrics, summary, validity, records, identical_models(records), noisy)


def _write_tables(out: Path, tables: _Tables, manifest: dict, settings, predictions) -> dict:
    """``metrics.csv``, ``summary.csv``, ``validity.csv`` and ``metrics.md``; their paths."""
    paths = table_paths(out)
    tables.metrics.to_csv(paths["metrics_csv"], index=False)
    tables.summary.to_csv(paths["summary_csv"], index=False)
    tables.validity.to_csv(paths["validity_csv"], index=False)
    paths["markdown"].write_text(
        run_markdown(
            tables.summary,
            tables.validity,
            manifest,
            settings,
            list(predictions),
            tables.same,
            {n: reference_of(p) for n, p in predictions.items()},
        )
        + "".join(f"\n**Sampling noise.** {line}\n" for line in tables.noisy)
    )
    return paths


def _write_plots(out: Path, tables: _Tables, evaluations: dict, models: list, settings) -> dict:
    """Metric bars, a predicted-vs-real scatter per model and the validity bars; their paths."""
    from cellrlhf.evaluation.plots import plot_change_scatter, plot_metric_bars, plot_validity

    paths = {}
    bars = plot_metric_bars(tables.summary, out / BAR_PLOT_FILENAME, models=models)
    if bars:
        paths["bar_plot"] = bars
    for name in models:
        png = plot_change_scatter(
            evaluations,
            name,
            scatter_path(out, name),
            n_panels=settings.scatter_perturbations,
        )
        if png:
            paths[f"scatter_{name}"] = png
    validity = tables.validity
    if len(validity):
        png = plot_validity(
            validity[validity["cell_context"] == ALL_CONTEXTS], out / VALIDITY_PLOT_FILENAME
        )
        if png:
            paths["validity_plot"] = png
    return paths


def _model_record(model_dir: Path, pred) -> dict:
    """Where a model came from: directory, stage, weights checksum, the environment it was
    trained in (``None`` for directories saved before it was recorded), RL policy selection."""
    from cellrlhf.data.registry import file_sha256
    from cellrlhf.evaluation.model_dirs import probe_model_info

    uns = pred.uns["cellrlhf_prediction"]
    weights = model_dir / "model.safetensors"
    record = {
        "dir": str(model_dir),
        "stage": uns["params"]["model_stage"],
        "weights_sha256": uns["params"].get("weights_sha256")
        or (file_sha256(weights) if weights.is_file() else None),
        "validity": uns["validity"],
        "diversity": uns["diversity"],
        "trained_environment": probe_model_info(model_dir).get("environment"),
    }
    history = model_dir / "heldout_eval_history.json"
    if history.is_file():
        selection = json.loads(history.read_text()).get("selection") or {}
        record["selected_step"] = selection.get("best_step")
    return record


def identical_models(models: Mapping[str, dict]) -> list[list[str]]:
    """Groups of model names whose saved weights are byte-identical and that were sampled the
    same way (under the cell grammar or not), so their rows agree (e.g. an RL stage that kept
    its starting policy as the best one; not ``sft`` and ``sft_grammar``)."""
    groups: dict[tuple, list[str]] = {}
    for name, record in models.items():
        if record.get("weights_sha256"):
            constrained = bool((record.get("validity") or {}).get("constrained"))
            groups.setdefault((record["weights_sha256"], constrained), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
