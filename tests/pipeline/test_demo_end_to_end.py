"""``cellrlhf demo`` end to end on the reduced (tiny) flavour, its resume, and its report in Chromium."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cellrlhf.pipeline.report import EVALUATION_TITLE, SECTION_TITLES

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
STAGES = (
    "data",
    "pretrain",
    "sft",
    "preferences",
    "reward",
    "ppo",
    "grpo",
    "evaluate",
    "aggregate",
)


def _demo(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "cellrlhf", "demo", "--flavour", "tiny", "--simulated"]
        + ["--run-dir", str(run_dir), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    result = _demo(run_dir)
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir, result


@pytest.mark.slow
def test_demo_runs_every_stage_and_labels_simulated_data(demo_run):
    run_dir, result = demo_run
    for stage in STAGES:
        assert (run_dir / ".pipeline" / f"{stage}.json").exists(), stage
        assert f"{stage} done in" in result.stderr
    for model_stage in ("pretrain", "sft", "reward", "ppo", "grpo"):
        assert (run_dir / model_stage / "model.safetensors").stat().st_size > 0
        assert not list((run_dir / model_stage).glob("*.bin")), "no pickle weights are written"
    assert "SIMULATED" in result.stderr
    assert f"cellrlhf chat --model {run_dir}/ppo" in result.stderr
    assert "\nVerdict\n" in result.stdout, "the demo's terminal output ends with the verdict"
    verdict = result.stdout.split("\nVerdict\n")[-1]
    assert "over SFT (grammar)" in verdict or "vs SFT (grammar)" in verdict  # like with like
    # demo.yaml: max_parallel 2, GRPO needs only data and SFT, so it runs beside the reward lane
    marker = {s: json.loads((run_dir / ".pipeline" / f"{s}.json").read_text()) for s in STAGES}
    grpo, prefs = marker["grpo"], marker["preferences"]
    assert grpo["started_at"] < prefs["ended_at"] and prefs["started_at"] < grpo["ended_at"]
    assert marker["evaluate"]["started_at"] >= max(marker[s]["ended_at"] for s in ("ppo", "grpo"))


@pytest.mark.slow
def test_report_has_every_section_and_nonempty_plots(demo_run):
    run_dir, _ = demo_run
    md = (run_dir / "report" / "report.md").read_text()
    page = (run_dir / "report" / "report.html").read_text()
    for title in SECTION_TITLES:
        assert f"## {title}" in md and f"<h2>{title}</h2>" in page
    assert "SIMULATED DATA" in page
    assert "ppo start (SFT)" in md and "grpo last" in md
    assert "pairwise_accuracy" in md
    section = md.split(f"## {EVALUATION_TITLE}")[1].split("\n## ")[0]
    assert "SIMULATED DATA" in section
    for method in ("sft", "ppo", "grpo", "mean", "split_half", "representation_decoder"):
        assert f"| {method} " in section, method
    pngs = list((run_dir / "report").glob("*.png"))
    assert {p.name for p in pngs} >= {
        "curves_sft.png",
        "curves_ppo.png",
        "timings.png",
        "eval_metrics.png",
        "eval_pred_vs_real_ppo.png",
        "eval_validity.png",
    }
    assert all(p.stat().st_size > 2000 for p in pngs)


@pytest.mark.slow
def test_evaluation_outputs_score_every_model_per_context(demo_run):
    import json

    import pandas as pd

    run_dir, _ = demo_run
    out = run_dir / "eval"
    manifest = json.loads((out / "manifest.json").read_text())
    kept = [m for m in manifest["models"] if not m.endswith("_last")]
    # the constrained GRPO policy brings SFT sampled under the grammar (like with like)
    assert kept == ["sft", "sft_grammar", "ppo", "grpo"] and not manifest["skipped_models"]
    assert manifest["models"]["sft_grammar"]["validity"]["valid_cell_fraction"] == 1.0
    # every RL run's last policy: its last/ directory, or the kept policy itself (same weights)
    assert set(manifest["models"]) - set(kept) == {"ppo_last", "grpo_last"}
    for name in ("ppo_last", "grpo_last"):
        kept_name = name[: -len("_last")]
        same = any({kept_name, name} <= set(g) for g in manifest["identical_models"])
        assert (run_dir / kept_name / "last").is_dir() or same
    summary = pd.read_csv(out / "summary.csv")
    assert {"sft", "ppo", "grpo", "control", "split_half"} <= set(summary["method"])
    assert set(summary["method_type"]) == {"model", "baseline", "ceiling"}
    for model in ("sft", "ppo", "grpo"):
        assert (out / "predictions" / f"{model}.h5ad").stat().st_size > 0
        assert (out / f"pred_vs_real_{model}.png").stat().st_size > 5000


@pytest.mark.slow
def test_rerun_skips_finished_stages(demo_run):
    run_dir, _ = demo_run
    again = _demo(run_dir)
    assert again.returncode == 0, again.stderr[-2000:]
    for stage in STAGES:
        assert f"{stage}: skipped" in again.stderr


@pytest.mark.slow
@pytest.mark.browser
def test_report_renders_in_chromium(demo_run, chromium_page):
    run_dir, _ = demo_run
    page = chromium_page
    page.goto((run_dir / "report" / "report.html").as_uri())
    assert page.locator("h2").all_inner_texts() == list(SECTION_TITLES)
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths and all(w > 100 for w in widths), "every embedded plot decodes"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo_report.png"), full_page=True)
    assert (ARTIFACTS / "demo_report.png").stat().st_size > 10_000
