import json
import re
from pathlib import Path

import pytest

from cellrlhf.pipeline.report import EVALUATION_TITLE, SECTION_TITLES, write_report
from cellrlhf.pipeline.runner import run_pipeline
from cellrlhf.pipeline.spec import load_pipeline


@pytest.fixture()
def finished_run(tmp_path):
    run = tmp_path / "run"
    spec = load_pipeline(
        {
            "run_dir": str(run),
            "stages": [
                {"name": "data", "command": ["--version"], "output_dir": "{run_dir}/data"},
                {"name": "sft", "command": ["--version"], "output_dir": "{run_dir}/sft"},
                {"name": "eval", "command": ["--version"], "output_dir": "{run_dir}/eval"},
            ],
        }
    )
    run_pipeline(spec)
    (run / "data").mkdir()
    (run / "data" / "manifest.json").write_text(
        json.dumps({"simulated": True, "counts": {"n_cells": 1200, "n_perturbations": 12}})
    )
    (run / "sft").mkdir()
    history = [{"step": s, "loss": 3.0 - 0.2 * s} for s in range(1, 6)]
    (run / "sft" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    (run / "eval").mkdir()
    (run / "eval" / "metrics.csv").write_text("method,pearson_delta\ncontrol_mean,0.0\nsft,0.41\n")
    return spec


def test_report_has_every_section_and_nonempty_plots(finished_run):
    paths = write_report(finished_run)
    md = paths["markdown"].read_text()
    page = paths["html"].read_text()
    for title in SECTION_TITLES:
        assert f"## {title}" in md and f"<h2>{title}</h2>" in page
    assert "SIMULATED DATA" in md and "SIMULATED DATA" in page
    assert "| sft" in md and "0.41" in md
    assert "1,200" in md and "1200.0" not in md
    curves = paths["dir"] / "curves_sft.png"
    timings = paths["dir"] / "timings.png"
    assert curves.stat().st_size > 1000 and timings.stat().st_size > 1000
    assert page.count("data:image/png;base64,") == 2
    assert "-m cellrlhf --version" in md
    assert "CPU seconds" in md and "min CPU" in md  # the runner recorded CPU time per stage


def test_report_on_a_run_that_has_not_started(tmp_path):
    spec = load_pipeline(
        {"run_dir": str(tmp_path / "r"), "stages": [{"name": "a", "command": ["x"]}]}
    )
    md = write_report(spec)["markdown"].read_text()
    assert "No data manifest found" in md and "(not run)" in md


def _png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)


def _write_metrics(ev, *, n=6):
    """A metrics.csv as ``cellrlhf evaluate`` writes it: ppo beats sft by 0.1 on every one of
    ``n`` single perturbations; the mean baseline is 0.3; control is undefined on correlations;
    discrimination is 1 for everyone."""
    rows = ["method,method_type,cell_context,perturbation,kind,pearson_specific,"
            "discrimination_score_l1,mae"]  # fmt: skip
    for i in range(n):
        sft = 0.2 + 0.02 * i
        for method, mtype, value in (
            ("sft", "model", sft),
            ("ppo", "model", sft + 0.1),
            ("control", "baseline", ""),
            ("mean", "baseline", 0.3),
            ("split_half", "ceiling", 0.6),
        ):
            rows.append(f"{method},{mtype},K562,P{i},single,{value},1.0,0.5")
    (ev / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_evaluation_section_shows_table_plots_and_validity(tmp_path):
    run = tmp_path / "run"
    spec = load_pipeline(
        {
            "run_dir": str(run),
            "stages": [
                {"name": "data", "command": ["--version"], "output_dir": "{run_dir}/data"},
                {"name": "evaluate", "command": ["--version"], "output_dir": "{run_dir}/eval"},
            ],
        }
    )
    (run / "data").mkdir(parents=True)
    (run / "data" / "manifest.json").write_text(json.dumps({"simulated": True}))
    ev = run / "eval"
    ev.mkdir()
    rows = [
        "method,method_type,cell_context,kind,n_perturbations,pearson_delta,mae,valid_fraction",
        "ppo,model,all,single,3,0.512,0.2,0.97",
        "mean,baseline,all,single,3,0.301,0.3,",
        "split_half,ceiling,all,single,3,0.801,0.1,",
        "ppo,model,all,all,3,0.512,0.2,0.97",
        "ppo,model,K562,all,3,0.498,0.2,0.96",
        "mean,baseline,K562,all,3,0.311,0.3,",
    ]
    (ev / "summary.csv").write_text("\n".join(rows) + "\n")
    _write_metrics(ev)
    (ev / "validity.csv").write_text(
        "model,cell_context,valid_fraction,distinct_sentence_fraction\nppo,all,0.973,0.88\n"
    )
    for name in ("metrics.png", "pred_vs_real_ppo.png", "validity.png"):
        _png(ev / name)
    (ev / "manifest.json").write_text(
        json.dumps(
            {
                "format": "cellrlhf.evaluation",
                "simulated": True,
                "models": {"sft": {}, "ppo": {"selected_step": 0}},
                "identical_models": [["sft", "ppo"]],
                "skipped_models": ["grpo"],
                "settings": {
                    "cells_per_prompt": 64,
                    "temperature": 1.0,
                    "seed": 0,
                    "baselines": ["control", "mean", "additive"],
                },
                "dataset": {"name": "norman", "split_kind": "unseen_single"},
            }
        )
    )
    paths = write_report(spec)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    section = md.split(f"## {EVALUATION_TITLE}")[1].split("\n## ")[0]
    assert "SIMULATED DATA" in section and "left out, not found: grpo" in section
    assert "| ppo" in section and "0.512" in section and "0.801" in section
    assert "sft, ppo have identical weights" in section and "ppo (best held-out step 0)" in section
    assert "| K562" in section and "0.498" in section
    assert "0.973" in section, "generated-cell validity is shown"
    for name in ("eval_metrics.png", "eval_pred_vs_real_ppo.png", "eval_validity.png"):
        assert f"]({name})" in section and (paths["dir"] / name).stat().st_size > 1000
    assert f"<h2>{EVALUATION_TITLE}</h2>" in page and "<td>0.512</td>" in page
    # the long per-perturbation table is not repeated in the generic sections
    assert "eval/metrics.csv" not in md
    # not-applicable baselines and metrics that cannot separate methods are said so
    assert "baseline `additive` predicts none of the held-out single" in section
    assert "`discrimination_score_l1` is 1.000 for every model and baseline" in section


def test_report_leads_with_the_verdict(tmp_path):
    test_evaluation_section_shows_table_plots_and_validity(tmp_path)
    report = tmp_path / "run" / "report"
    md, page = (report / "report.md").read_text(), (report / "report.html").read_text()
    assert md.split("\n## ")[1].startswith("Verdict")
    verdict = md.split("## Verdict")[1].split("\n## ")[0]
    assert "### unseen_single (norman): 1 run (1 fold x 1 seed)" in verdict
    assert "| best model" in verdict and "| ppo" in verdict
    assert "| best baseline" in verdict and "| mean" in verdict
    # split-half 0.6; at full depth (Spearman-Brown) 2 * 0.6 / 1.6 where the metric is corrected
    assert "| ceiling (split-half)" in verdict and ("0.600" in verdict or "0.750" in verdict)
    assert (
        "- PPO improved held-out perturbation-specific fidelity over SFT by +0.10 "
        "(95% CI 0.10 to 0.10, 6 perturbations)." in verdict
    )
    assert "Baseline additive applies to none of the held-out single perturbations" in verdict
    assert page.index("<h2>Verdict</h2>") < page.index("<h2>Data</h2>")
    assert page.index("PPO improved") < page.index(f"<h2>{EVALUATION_TITLE}</h2>")
    # the intervals section has the pooled table and its plots
    intervals = md.split("## Test perturbations: pooled means")[1].split("\n## ")[0]
    assert "0.600 [0.600, 0.600]" in intervals and "](pooled_unseen_single_norman.png)" in intervals


def _timings(md):
    return md.split("## Timings")[1].split("\n## ")[0]


def test_timings_of_overlapping_stages_show_the_real_elapsed_time(tmp_path):
    from cellrlhf.pipeline.stage_marker import write_marker

    run = tmp_path / "run"
    names = ("sft", "ppo", "grpo", "evaluate")
    spec = load_pipeline(
        {"run_dir": str(run), "stages": [{"name": n, "command": ["--version"]} for n in names]}
    )
    t0 = 1_700_000_000.0
    spans = {"sft": (0, 60), "ppo": (60, 660), "grpo": (60, 360), "evaluate": (660, 720)}
    for name, (start, end) in spans.items():
        write_marker(
            run,
            spec.stage(name),
            seconds=end - start,
            argv=["x"],
            cpu_seconds=(end - start) / 2,
            started_at=t0 + start,
            ended_at=t0 + end,
        )
    section = _timings(write_report(spec)["markdown"].read_text())
    # 12 min elapsed from the first start to the last end; the stage times add up to 17 min
    assert (
        "Total: 12.0 min wall (stages ran in parallel: their times add up to 17.0 min)" in section
    )
    assert "8.5 min CPU" in section
    rows = {line.split("|")[1].strip(): line.split("|")[2:5] for line in section.splitlines()[4:8]}
    assert "started at (s)" in section
    assert [float(v) for v in rows["grpo"]] == [300, 150, 60]
    assert [float(v) for v in rows["evaluate"]] == [60, 30, 660]
    # a stage re-run a day later adds its own time, not the day in between
    write_marker(
        run,
        spec.stage("evaluate"),
        seconds=60,
        argv=["x"],
        cpu_seconds=30,
        started_at=t0 + 86_400,
        ended_at=t0 + 86_460,
    )
    section = _timings(write_report(spec)["markdown"].read_text())
    assert "Total: 12.0 min wall" in section
    rows = {line.split("|")[1].strip(): line.split("|")[2:5] for line in section.splitlines()[4:8]}
    # the idle day is left out of the start times (and of the timeline plot) too
    assert float(rows["evaluate"][2]) == 660
    assert "![stage timeline](timings.png)" in section


def test_timings_without_start_times_add_up_stage_seconds(tmp_path):
    from cellrlhf.pipeline.stage_marker import write_marker

    run = tmp_path / "run"
    spec = load_pipeline(
        {"run_dir": str(run), "stages": [{"name": n, "command": ["x"]} for n in ("a", "b")]}
    )
    for name in ("a", "b"):
        write_marker(run, spec.stage(name), seconds=90, argv=["x"], cpu_seconds=90)
    section = _timings(write_report(spec)["markdown"].read_text())
    assert "Total: 3.0 min wall, 3.0 min CPU" in section and "in parallel" not in section
    assert "started at (s)" not in section


def test_heldout_table_names_the_split_each_policy_was_selected_on(tmp_path):
    from cellrlhf.pipeline.report import heldout_table
    from cellrlhf.pipeline.report_data import RunArtifacts

    def history(split, fidelities, best):
        return {
            "settings": {"split": split},
            "selection": {"best_step": best},
            "evaluations": [
                {"step": 10 * i, "metrics": {"heldout/pearson_delta": f}}
                for i, f in enumerate(fidelities)
            ],
        }

    spec = load_pipeline({"run_dir": str(tmp_path), "stages": [{"name": "a", "command": ["x"]}]})
    art = RunArtifacts(
        spec,
        json_results={
            "grpo/heldout_eval_history.json": history("validation", [0.5, 0.7, 0.6], 10),
            "ppo/heldout_eval_history.json": {  # written before the split was recorded
                **history("test", [0.4, 0.3], 0),
                "settings": {},
            },
        },
    )
    table = heldout_table(art)
    assert table[["model", "split", "step", "pearson_delta"]].values.tolist() == [
        ["grpo start (SFT)", "validation", 0, 0.5],
        ["grpo best", "validation", 10, 0.7],
        ["grpo last", "validation", 20, 0.6],
        ["ppo start (SFT)", "test", 0, 0.4],
        ["ppo best", "test", 0, 0.4],
        ["ppo last", "test", 10, 0.3],
    ]


def _spec(run, stages):
    return load_pipeline(
        {
            "run_dir": str(run),
            "stages": [
                {"name": n, "command": ["--version"], "output_dir": f"{{run_dir}}/{d}"}
                for n, d in stages
            ],
        }
    )


def test_data_section_is_a_small_human_table(tmp_path):
    run = tmp_path / "run"
    spec = _spec(run, [("data", "data")])
    (run / "data").mkdir(parents=True)
    manifest = {
        "format": "cellrlhf.dataset",
        "name": "norman",
        "source": {"file": "norman.h5ad", "n_cells_selected": 12345},
        "perturbations": ["control", "A", "B", "A+B", "C"],
        "cell_contexts": ["K562"],
        "vocab": {"n_genes": 2000},
        "config": {
            "split": {"kind": "unseen_single", "folds": 3, "fold": 1},
            "evidence": {"kinds": ["average_response"]},
        },
        "split": {
            "kind": "unseen_single",
            "test_perturbations": ["B"],
            "cells": {"train": 9000, "validation": 1000, "test": 2000, "excluded": 345},
            "file": "splits.json",
        },
        "counts": {"sft": {"train": 100, "validation": 10}, "rl": {"train": 20}},
    }
    (run / "data" / "manifest.json").write_text(json.dumps(manifest))
    splits = {"test_perturbations": ["B"], "validation_perturbations": ["C"],
              "excluded_perturbations": ["A+B"], "cells": {"train": ["c1", "c2"]}}  # fmt: skip
    (run / "data" / "splits.json").write_text(json.dumps(splits))
    md = write_report(spec)["markdown"].read_text()
    section = re.sub(r" +", " ", md.split("## Data")[1].split("\n## ")[0])
    assert (
        "| data set | source | cells | perturbations | cell contexts | genes | held out "
        "| evidence in prompts | fold |" in (section)
    )
    assert (
        "| norman | norman.h5ad | 12,345 | 4 | K562 | 2,000 | unseen_single | average_response "
        "| 1 of 3 |" in section
    )
    for row in ("| train | 9,000 | the rest |", "| validation | 1,000 | C |", "| test | 2,000 | B |",
                "| excluded | 345 | A+B |"):  # fmt: skip
        assert row in section, row
    assert "SFT examples train 100, validation 10; RL prompts train 20." in section
    assert "{" not in section and "counts." not in section and "c1" not in section


def test_rl_selection_is_apart_from_the_test_results(tmp_path):
    run = tmp_path / "run"
    spec = _spec(run, [("grpo", "grpo"), ("ppo", "ppo")])
    for stage, split in (("grpo", "validation"), ("ppo", "test")):
        (run / stage).mkdir(parents=True)
        history = {
            "settings": {"split": split},
            "selection": {"best_step": 0},
            "evaluations": [{"step": 0, "metrics": {"heldout/pearson_delta": 0.4}}],
        }
        (run / stage / "heldout_eval_history.json").write_text(json.dumps(history))
    _png(run / "grpo" / "heldout_eval.png")
    md = write_report(spec)["markdown"].read_text()
    sections = {chunk.split("\n")[0]: chunk for chunk in md.split("\n## ")[1:]}
    selection = sections[SECTION_TITLES[6]]
    assert "not test results" in SECTION_TITLES[6]
    assert "](grpo_heldout_eval.png)" in selection and "| grpo best" in selection
    assert "**Warning:** a stage selected its policy on the `test` split" in selection
    others = [body for title, body in sections.items() if title != SECTION_TITLES[6]]
    assert not any("heldout_eval" in body or "grpo best" in body for body in others)


def test_an_aggregate_stage_is_the_verdict_source(tmp_path):
    from cellrlhf.evaluation.aggregate import aggregate_evaluations
    from cellrlhf.evaluation.aggregate_files import write_aggregate

    run = tmp_path / "run"
    spec = _spec(run, [("evaluate", "eval"), ("aggregate", "aggregate")])
    ev = run / "eval"
    ev.mkdir(parents=True)
    _write_metrics(ev)
    manifest = {"format": "cellrlhf.evaluation", "models": {"sft": {}, "ppo": {}},
                "dataset": {"name": "norman", "split_kind": "unseen_single"}}  # fmt: skip
    (ev / "manifest.json").write_text(json.dumps(manifest))
    write_aggregate(aggregate_evaluations({"fold0_seed0": ev}, n_boot=100), run / "aggregate")
    md = write_report(spec)["markdown"].read_text()
    verdict = md.split("## Verdict")[1].split("\n## ")[0]
    assert f"Source: `{run / 'aggregate'}`" in verdict and "(100 resamples, seed 0)" in verdict
    assert "- PPO improved held-out perturbation-specific fidelity over SFT by +0.10" in verdict
    assert "aggregate/manifest.json" not in md  # not among the generic tables


@pytest.mark.browser
def test_report_first_screen_is_the_verdict_and_tables_fit(tmp_path, chromium_page):
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
    test_report_leads_with_the_verdict(tmp_path)
    page = chromium_page
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto((tmp_path / "run" / "report" / "report.html").as_uri())
    assert page.locator("h2").all_inner_texts() == list(SECTION_TITLES)
    verdict_box = page.locator("section#s0").bounding_box()
    assert verdict_box["y"] < 300, "the verdict starts on the first screen"
    assert page.get_by_text("PPO improved held-out").first.bounding_box()["y"] < 900
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 1280, "no table runs off the page"
    artifacts.mkdir(exist_ok=True)
    page.screenshot(path=str(artifacts / "report_first_screen.png"))
