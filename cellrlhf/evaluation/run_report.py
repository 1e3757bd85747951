"""The markdown report of a ``cellrlhf evaluate`` run (``metrics.md``): which prompts (test,
validation or the training fit check), what every method is scored against, then one summary
table per cell context."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "ALL_CONTEXTS",
    "MODEL_COLUMNS",
    "reference_of",
    "reference_text",
    "run_markdown",
    "title",
]

MODEL_COLUMNS = ("valid_fraction", "valid_cell_fraction", "distinct_sentence_fraction")
ALL_CONTEXTS = "all"


def reference_text(references: Mapping[str, str]) -> str:
    """How the report states each model's reference (``predict``'s ``params["reference"]``)."""
    own = [f"`{m}`" for m, r in references.items() if r == "model"]
    real = [f"`{m}`" for m, r in references.items() if r != "model"]
    parts = []
    if own:
        parts.append(
            "its own answers to the control twin of each prompt (the same prompt about "
            f"`<pert> <control> </pert>`, which the dataset teaches): {', '.join(own)}"
        )
    if real:
        parts.append(
            "the real control cells of the prompts (as the dataset built them) through the same "
            "decoder: " + ", ".join(real)
        )
    return "; ".join(parts) or "no model"


def reference_of(prediction) -> str:
    from cellrlhf.evaluation.prediction import PREDICTION_KEY

    return str(prediction.uns[PREDICTION_KEY]["params"].get("reference", "real"))


def title(split: str) -> str:
    """The report's title for the prompts of ``split``."""
    return "Training perturbations (fit check)" if split == "train" else "Held-out perturbations"


def run_markdown(summary, validity, manifest: dict, settings, models, same, references=None) -> str:
    """``metrics.md`` of a ``cellrlhf evaluate`` run: what was scored against what, then the
    summary table per cell context and the validity of the generated cells."""
    from cellrlhf.evaluation.eval_report import KEY_METRICS, markdown_summary

    lines = [f"# {title(settings.split)}: models vs baselines and ceilings", ""]
    if manifest.get("simulated"):
        lines += ["**SIMULATED DATA**: every number describes the simulator, not biology.", ""]
    if settings.split == "validation":
        lines += [
            "**VALIDATION PROMPTS**: the RL selection perturbations, for choosing settings; "
            "these are not the test figures.",
            "",
        ]
    elif settings.split == "train":
        lines += [
            "**TRAIN PROMPTS**: a fit check on perturbations the models were trained on, not a "
            "result. Each baseline predicts each perturbation, and `pearson_specific` takes its "
            "reference, from the training cells without that perturbation's cells in its "
            "context (leave-one-out): a model below the leave-one-out `mean` here has not "
            "learned its own training perturbations, and a larger model or more informative "
            "data is the next step before RL (docs/metrics.md).",
            "",
        ]
    lines += [
        f"Dataset `{manifest.get('name', '')}` (fingerprint `{str(manifest.get('fingerprint'))[:12]}`); "
        f"models: {', '.join(f'`{m}`' for m in models) or 'none (baselines and ceilings only)'}; "
        f"{settings.cells_per_prompt} sampled "
        f"cells per prompt at temperature {settings.temperature}, seed {settings.seed}.",
        "",
        f"Every method is scored on the same real {settings.split} cells of each cell context "
        "(and its control). Baselines learn from the training cells; `split_half` is the real-vs-real "
        "ceiling (Spearman-Brown: at full depth); `representation_decoder` is real cells through "
        "encode -> decode, the best any sentence model can do with this decoder. A model's change "
        f"is taken against {reference_text(references or {})}. `pearson_specific` scores "
        "the change relative to the context's mean training change (the `mean` baseline scores "
        "0 on it; a positive value is signal specific to the perturbation); definitions with "
        "worked examples in docs/metrics.md.",
        "",
    ]
    for names in same:
        lines += [
            f"Note: {', '.join(f'`{n}`' for n in names)} have identical weights (an RL stage "
            "keeps its best held-out policy, which can be its starting point), so their rows "
            "are the same.",
            "",
        ]
    metrics = (*KEY_METRICS, *MODEL_COLUMNS)
    for ctx in dict.fromkeys(summary["cell_context"]):
        heading = "all contexts (mean over context x perturbation)" if ctx == ALL_CONTEXTS else ctx
        lines += [
            f"## {heading}",
            "",
            markdown_summary(summary[summary["cell_context"] == ctx], metrics),
        ]
    if len(validity):
        lines += ["## Generated-cell validity", "", validity.round(4).to_markdown(index=False), ""]
    return "\n".join(lines)
