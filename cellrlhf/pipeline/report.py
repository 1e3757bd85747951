"""The run report: one self-contained HTML file and the same content in Markdown.

It leads with the verdict (per setting: best model, best baseline, ceiling, paired differences
with 95% intervals, plain sentences), then the data, then the test-split results; what the RL
stages selected their policies on (a validation split) has its own section further down, apart
from the test results. Both renderings come from one list of sections
(:mod:`cellrlhf.pipeline.report_render`), so they never disagree. Plots are PNG files next to
the report, readable without the HTML; the HTML embeds them so it can be mailed alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from cellrlhf.evaluation.aggregate import DEFAULT_METRICS
from cellrlhf.pipeline.report_data import (
    EvaluationArtifacts,
    RunArtifacts,
    collect_artifacts,
    load_aggregate,
)
from cellrlhf.pipeline.report_plots import plot_history, plot_timings
from cellrlhf.pipeline.report_render import Section, to_html, to_markdown
from cellrlhf.pipeline.report_verdict import (
    DATA_TITLE,
    INTERVALS_TITLE,
    VERDICT_TITLE,
    data_manifests,
    data_section,
    intervals_section,
    verdict_section,
)
from cellrlhf.pipeline.spec import PipelineSpec

__all__ = [
    "EVALUATION_TITLE",
    "SECTION_TITLES",
    "Section",
    "build_sections",
    "evaluation_tables",
    "heldout_table",
    "verdict_lines",
    "write_report",
]

EVALUATION_TITLE = "Test perturbations: models vs baselines and ceilings"
SELECTION_TITLE = "RL policy selection (what the RL stages selected on; not test results)"
SECTION_TITLES = (
    VERDICT_TITLE,
    DATA_TITLE,
    EVALUATION_TITLE,
    INTERVALS_TITLE,
    "Training and reward curves",
    "Reward model",
    SELECTION_TITLE,
    "Other result tables and plots",
    "Generated-cell validity during training",
    "Timings",
    "Commands and configs",
)


def verdict_lines(run_or_aggregate_dir: str | Path) -> list[str]:
    """The verdict for the terminal (see :func:`cellrlhf.evaluation.verdict.verdict_lines`)."""
    from cellrlhf.evaluation.verdict import verdict_lines as lines

    return lines(run_or_aggregate_dir)


def _flat_numbers(payload: object, prefix: str = "") -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    if isinstance(payload, dict):
        for key, value in payload.items():
            out.update(_flat_numbers(value, f"{prefix}{key}." if prefix or key else ""))
    elif isinstance(payload, (int, float)) and not isinstance(payload, bool):
        out[prefix.rstrip(".")] = payload
    return out


def _numbers_table(payload: dict, limit: int = 40) -> pd.DataFrame:
    items = [
        (k, f"{v:,}" if isinstance(v, int) else f"{v:.4g}")
        for k, v in list(_flat_numbers(payload).items())[:limit]
    ]
    return pd.DataFrame(items, columns=["quantity", "value"])


def _curves_section(art: RunArtifacts, out_dir: Path) -> Section:
    sec = Section("Training and reward curves")
    for stage, history in art.histories.items():
        png = plot_history(history, f"{stage}", out_dir / f"curves_{stage}.png")
        if png:
            sec.image(png, f"{stage}: logged quantities by step")
    if not sec.blocks:
        sec.text("No training logs found yet.")
    return sec


def _json_section(art: RunArtifacts, title: str, needle: str, empty: str) -> Section:
    sec = Section(title)
    for name, payload in art.json_results.items():
        if needle in name and isinstance(payload, dict):
            sec.text(f"`{name}`")
            sec.table(_numbers_table(payload))
    if not sec.blocks:
        sec.text(empty)
    return sec


_HELDOUT_KEYS = (
    "heldout/pearson_delta",
    "heldout/pearson_delta_top20",
    "heldout/valid_fraction",
    "heldout/duplicate_fraction",
    "heldout/distinct_fraction",
    "heldout/token_entropy",
)


def heldout_table(art: RunArtifacts) -> pd.DataFrame:
    """Held-out fidelity of every RL stage: at its SFT start (step 0), best and last evaluation."""
    rows = []
    for name, payload in art.json_results.items():
        if not name.endswith("heldout_eval_history.json") or not isinstance(payload, dict):
            continue
        evaluations = payload.get("evaluations") or []
        if not evaluations:
            continue
        stage = name.split("/")[0]
        best_step = (payload.get("selection") or {}).get("best_step")
        picks = [("start (SFT)", evaluations[0])]
        picks += [("best", e) for e in evaluations if e.get("step") == best_step][:1]
        picks.append(("last", evaluations[-1]))
        split = (payload.get("settings") or {}).get("split", "test")
        for label, entry in picks:
            metrics = entry.get("metrics", {})
            row = {"model": f"{stage} {label}", "split": split, "step": entry.get("step")}
            row.update({k.split("/", 1)[1]: metrics.get(k) for k in _HELDOUT_KEYS if k in metrics})
            rows.append(row)
    return pd.DataFrame(rows)


def _selection_section(art: RunArtifacts, out_dir: Path) -> Section:
    """What each RL stage's held-out monitor measured while it chose its policy."""
    sec = Section(SELECTION_TITLE)
    table = heldout_table(art)
    if len(table):
        splits = set(table["split"])
        sec.text(
            "Each RL stage's monitor (generated cells decoded, pseudo-bulk against the decoded "
            "control) on the `rl/` split named in the `split` column; the `best` row is the "
            "policy the stage kept. These numbers chose the policy, so they are not a test "
            "result: the test results are the sections above."
        )
        if "test" in splits:
            sec.text(
                "**Warning:** a stage selected its policy on the `test` split, so its test "
                "numbers above are optimistic. Hold out validation perturbations in the data "
                "config (split.n_validation_perturbations / n_validation_pairs)."
            )
        sec.table(table.round(4))
    for stage, paths in art.images.items():
        for path in paths:
            if "heldout" in path.name:
                sec.image(_copy(path, out_dir, f"{stage}_"), f"{stage}: policy-selection monitor")
    if not sec.blocks:
        sec.text("No RL policy-selection monitor found (no RL stage has run, or none logged).")
    return sec


def _other_section(art: RunArtifacts, out_dir: Path) -> Section:
    """Result tables and plots of other stages (e.g. ``cellrlhf evaluate``), as they are."""
    sec = Section("Other result tables and plots")
    for name, frame in art.metric_tables.items():
        sec.text(f"`{name}`")
        sec.table(frame.round(4) if hasattr(frame, "round") else frame)
    for stage, paths in art.images.items():
        for path in paths:
            if any(w in path.name for w in ("delta", "scatter", "pred_vs")):
                sec.image(
                    _copy(path, out_dir, f"{stage}_"), f"{stage}: {path.stem.replace('_', ' ')}"
                )
    if not sec.blocks:
        sec.text("No other result tables or plots.")
    return sec


# columns of the evaluation tables in the report (those present are shown)
# the evaluation tables show what the aggregate pools (one list of headline metrics)
_EVAL_COLUMNS = (
    "method",
    "method_type",
    "cell_context",
    "kind",
    "n_perturbations",
    *DEFAULT_METRICS,
)


def evaluation_tables(evaluation: EvaluationArtifacts) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The report's two tables: all contexts by kind (single / combo), and each context."""
    summary = evaluation.summary
    if summary is None or summary.empty:
        return pd.DataFrame(), pd.DataFrame()
    columns = [c for c in _EVAL_COLUMNS if c in summary.columns]
    overall = summary[(summary["cell_context"] == "all") & (summary["kind"] != "all")]
    if overall.empty:
        overall = summary[summary["cell_context"] == "all"]
    per_context = summary[(summary["cell_context"] != "all") & (summary["kind"] == "all")]
    drop = ["cell_context"]
    return (
        overall[[c for c in columns if c not in drop]].round(3).reset_index(drop=True),
        per_context[[c for c in columns if c != "kind"]].round(3).reset_index(drop=True),
    )


def _evaluation_intro(sec: Section, art: RunArtifacts, evaluation: EvaluationArtifacts) -> None:
    manifest = evaluation.manifest
    if evaluation.simulated or art.simulated:
        sec.text(
            "**SIMULATED DATA.** These scores describe the simulator, not biology: do not "
            "read them as evidence about real perturbation responses."
        )
    if len(art.evaluations) > 1:
        sec.text(
            f"Evaluation `{evaluation.stage}` (one of {len(art.evaluations)}: "
            f"{', '.join(art.evaluations)}); the pooled results over all of them are in the next "
            "section."
        )
    settings = manifest.get("settings") or {}
    models = ", ".join(f"`{m}`" for m in manifest.get("models") or {}) or "none"
    skipped = manifest.get("skipped_models") or []
    sec.text(
        f"Models {models}"
        + (f" (left out, not found: {', '.join(skipped)})" if skipped else "")
        + f": {settings.get('cells_per_prompt')} cells sampled per test prompt at temperature "
        f"{settings.get('temperature')} (seed {settings.get('seed')}), decoded with the dataset's "
        "decoder; the model's control is the real control through the same decoder. Every "
        "method is scored per cell context on the same real test cells. Baselines learn from "
        "the training cells; ceilings: `split_half` (real vs real; Spearman-Brown at full depth "
        "in the verdict) and `representation_decoder` (real cells through encode -> decode)."
    )
    for names in manifest.get("identical_models") or []:
        steps = {n: (manifest["models"].get(n) or {}).get("selected_step") for n in names}
        kept = [f"{n} (best held-out step {s})" for n, s in steps.items() if s is not None]
        sec.text(
            f"**{', '.join(names)} have identical weights**, so their rows are the same: an RL "
            "stage saves its best held-out policy, which was its starting point"
            + (f" ({'; '.join(kept)})." if kept else ".")
            + " The last policy of each RL stage is in its `last/` directory."
        )


def _flags(agg) -> list[str]:
    """Baselines that apply to no held-out perturbation of a kind; metrics that cannot separate."""
    if agg is None:
        return []
    out = []
    na = agg.not_applicable[agg.not_applicable["kind"] != "all"]
    for (setting, method), part in na.groupby(["setting", "method"], sort=False):
        kinds = " or ".join(sorted(part["kind"]))
        out.append(
            f"**Not applicable:** baseline `{method}` predicts none of the held-out {kinds} "
            f"perturbations of {setting}, so it has no row (not a score of zero)."
        )
    flat = agg.flat_metrics[agg.flat_metrics["kind"] == "all"]
    for _, row in flat.iterrows():
        out.append(
            f"**Cannot separate methods:** `{row['metric']}` is {row['value']:.3f} for every "
            f"model and baseline on {row['setting']}; do not read differences into it."
        )
    return out


def _evaluation_section(art: RunArtifacts, out_dir: Path, agg=None) -> Section:
    sec = Section(EVALUATION_TITLE)
    evaluation = art.evaluation
    if evaluation is None:
        sec.text("No evaluation found (the evaluate stage has not run).")
        return sec
    _evaluation_intro(sec, art, evaluation)
    overall, per_context = evaluation_tables(evaluation)
    if len(overall):
        sec.text("All cell contexts (mean over context x perturbation), by kind:")
        sec.table(overall)
    if len(per_context):
        sec.text("Per cell context (each against its own control):")
        sec.table(per_context)
    for flag in _flags(agg):
        sec.text(flag)
    if evaluation.bar_plot:
        sec.image(_copy(evaluation.bar_plot, out_dir, "eval_"), "test metrics per cell context")
    for png in evaluation.scatter_plots:
        model = png.stem.removeprefix("pred_vs_real_")
        sec.image(
            _copy(png, out_dir, "eval_"), f"{model}: predicted vs real change per gene (test)"
        )
    sec.text("Generated-cell validity and diversity on the test prompts (per model and context):")
    if evaluation.validity is not None and len(evaluation.validity):
        sec.table(evaluation.validity.round(3))
    if evaluation.validity_plot:
        sec.image(_copy(evaluation.validity_plot, out_dir, "eval_"), "generated-cell validity")
    sec.text(
        f"Files: `{evaluation.path}` (metrics.csv per perturbation, summary.csv, metrics.md, "
        "predictions/*.h5ad, manifest.json)."
    )
    return sec


def _copy(path: Path, out_dir: Path, prefix: str) -> Path:
    target = out_dir / f"{prefix}{path.name}"
    shutil.copyfile(path, target)
    return target


def _busy_seconds(spans: list[tuple[float, float]]) -> tuple[float, bool]:
    """Seconds during which at least one stage ran (union of the spans), and whether any overlap.

    The union, not last end minus first start, so stages re-run in a later invocation do not
    count the days between the two runs.
    """
    busy, overlapped = 0.0, False
    cur_start, cur_end = None, None
    for start, end in sorted(spans):
        if cur_end is not None and start < cur_end - 0.5:  # half a second: not a hand-over
            overlapped = True
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                busy += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        busy += cur_end - cur_start
    return busy, overlapped


def _busy_offsets(spans: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Each stage's start in seconds of busy time since the first start: time when no stage
    ran (e.g. the day between a run and a later re-run of one stage) is left out."""
    blocks: list[list[float]] = []  # merged [start, end] of busy time, in order
    for start, end in sorted(spans.values()):
        if blocks and start <= blocks[-1][1]:
            blocks[-1][1] = max(blocks[-1][1], end)
        else:
            blocks.append([start, end])

    def busy_before(t: float) -> float:
        return sum(min(end, t) - start for start, end in blocks if start <= t)

    return {name: busy_before(start) for name, (start, _) in spans.items()}


def _timings_section(art: RunArtifacts, out_dir: Path) -> Section:
    sec = Section("Timings")
    seconds = {name: float(m.get("seconds", 0.0)) for name, m in art.markers.items()}
    order = [s.name for s in art.spec.stages if s.name in seconds]
    seconds = {name: seconds[name] for name in order}
    if not seconds:
        sec.text("No stage has finished yet.")
        return sec
    markers = {name: art.markers[name] for name in seconds}
    cpu = {name: m.get("cpu_seconds") for name, m in markers.items()}
    spans = {
        name: (float(m["started_at"]), float(m["ended_at"]))
        for name, m in markers.items()
        if m.get("started_at") is not None and m.get("ended_at") is not None
    }
    columns = {
        "stage": list(seconds),
        "seconds": [round(v, 1) for v in seconds.values()],
        "CPU seconds": [None if v is None else round(float(v), 1) for v in cpu.values()],
    }
    if len(spans) == len(seconds):
        offsets = _busy_offsets(spans)
        columns["started at (s)"] = [round(offsets[name], 1) for name in seconds]
        wall, parallel = _busy_seconds(list(spans.values()))
    else:  # markers written before start/end times were recorded
        wall, parallel = sum(seconds.values()), False
    sec.table(pd.DataFrame(columns))
    total_cpu = [float(v) for v in cpu.values() if v is not None]
    text = f"Total: {wall / 60:.1f} min wall"
    if parallel:
        text += (
            f" (stages ran in parallel: their times add up to {sum(seconds.values()) / 60:.1f} min)"
        )
    if len(total_cpu) == len(cpu):
        text += (
            f", {sum(total_cpu) / 60:.1f} min CPU (sum over stages of user + system time of the "
            "stage processes; CPU well below wall x cores means the machine was shared)."
        )
    else:
        text += "."
    sec.text(text)
    starts = _busy_offsets(spans) if parallel else None
    png = plot_timings(seconds, out_dir / "timings.png", starts=starts)
    if png:
        sec.image(png, "stage timeline" if starts else "seconds per stage")
    return sec


def _commands_section(art: RunArtifacts) -> Section:
    sec = Section("Commands and configs")
    if art.spec.source:
        sec.text(f"Pipeline file: `{art.spec.source}`")
    seen: set[str] = set()
    for stage in art.spec.stages:
        marker = art.markers.get(stage.name)
        argv = marker.get("argv") if marker else None
        sec.text(f"**{stage.name}**" + ("" if marker else " (not run)"))
        sec.code(" ".join(argv) if argv else "cellrlhf " + " ".join(stage.command))
        args = list(stage.command)
        for flag in ("--config",):
            if flag in args and args.index(flag) + 1 < len(args):
                cfg = Path(args[args.index(flag) + 1])
                if cfg.exists() and str(cfg) not in seen:
                    seen.add(str(cfg))
                    sec.text(f"`{cfg}`")
                    sec.code(cfg.read_text())
    return sec


def build_sections(art: RunArtifacts, out_dir: Path) -> list[Section]:
    """The report's sections, in :data:`SECTION_TITLES` order (the verdict first)."""
    source = load_aggregate(art)
    sections = [
        verdict_section(source, data_manifests(art)),
        data_section(art),
        _evaluation_section(art, out_dir, source.aggregate),
        intervals_section(source, out_dir),
        _curves_section(art, out_dir),
        _json_section(
            art, "Reward model", "reward_model_eval", "No reward-model evaluation found."
        ),
        _selection_section(art, out_dir),
        _other_section(art, out_dir),
        _json_section(
            art,
            "Generated-cell validity during training",
            "eval_results",
            "No generation metrics found.",
        ),
        _timings_section(art, out_dir),
        _commands_section(art),
    ]
    assert tuple(s.title for s in sections) == SECTION_TITLES
    return sections


def write_report(spec: PipelineSpec, *, title: str | None = None) -> dict[str, Path]:
    """Write ``report/report.html``, ``report/report.md`` and the PNG plots into the run dir.

    Works on partly finished runs: sections without data say so.
    """
    out_dir = spec.run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    art = collect_artifacts(spec)
    title = title or f"cellrlhf run report: {spec.run_dir.name}"
    if art.simulated:
        title += " (SIMULATED DATA)"
    sections = build_sections(art, out_dir)
    md_path = out_dir / "report.md"
    html_path = out_dir / "report.html"
    md_path.write_text(to_markdown(title, sections, out_dir))
    html_path.write_text(to_html(title, sections, art.simulated))
    return {"html": html_path, "markdown": md_path, "dir": out_dir}
