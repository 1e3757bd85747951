"""Saved model directories carry the project's model card, with the evaluation as model-index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cellrlhf.hub.evaluation_summary import evaluation_dir_summary
from cellrlhf.sft.model_card import write_model_card

TRL_PLACEHOLDER = """---
license: license
base_model: None
---
This model is a fine-tuned version of [None](https://huggingface.co/None).
"""


def _card_metadata(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


@pytest.fixture
def model_dir(tiny_model_dir, tmp_path):
    """A copy of the tiny model whose README.md is TRL's placeholder, trained on licensed data."""
    out = tmp_path / "my-sft"
    shutil.copytree(tiny_model_dir, out)
    (out / "README.md").write_text(TRL_PLACEHOLDER)
    manifest = json.loads((out / "data_manifest.json").read_text())
    manifest["source"] = {
        "path": str(tmp_path / "my_own_disk" / "pbmc.h5ad"),
        "license": "BSD-3-Clause",
    }
    (out / "data_manifest.json").write_text(json.dumps(manifest))
    return out


def _evaluation_dir(root: Path, model_dir: Path) -> Path:
    """An output directory of ``cellrlhf evaluate`` scoring two models and a baseline."""
    out = root / "eval"
    out.mkdir()
    manifest = {
        "format": "cellrlhf.evaluation",
        "started": "2026-01-01T00:00:00",
        "seconds": 12.5,
        "dataset": {"name": "pbmc-test", "split_kind": "unseen_single"},
        "models": {"sft": {"dir": str(model_dir)}, "ppo": {"dir": str(root / "ppo")}},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    rows = []
    for method, base in (("sft", 0.5), ("ppo", 0.9), ("mean_baseline", 0.7)):
        for context in ("all", "B"):
            for j, kind in enumerate(("all", "single", "combo")):
                rows.append(
                    {
                        "method": method,
                        "method_type": "model",
                        "cell_context": context,
                        "kind": kind,
                        "n_perturbations": 7,
                        "pearson_delta": base + j / 10 + (context == "B"),
                        "pearson_delta_top20": base - 0.25,
                        "mae": 0.125,
                        "pearson_delta_ci_low": -9.0,
                        "seconds": 3.0,
                    }
                )
    pd.DataFrame(rows).to_csv(out / "summary.csv", index=False)
    return out


def test_the_project_card_replaces_trls_placeholder(model_dir):
    write_model_card(model_dir)
    text = (model_dir / "README.md").read_text()
    assert "fine-tuned version of [None]" not in text and "license: license" not in text
    meta = _card_metadata(text)
    assert meta["license"] == "bsd-3-clause"  # the training data's licence
    assert "cellrlhf" in meta["tags"] and "sft" in meta["tags"]
    assert "- Stage: `sft`" in text
    assert "- Tokenizer mode: `gene_tokens`" in text
    assert "- Base model: none, trained from scratch" in text
    assert "- Dataset: `pbmc68k_reduced-tiny`" in text
    assert "- License: BSD-3-Clause" in text
    assert "my_own_disk" not in text  # the file name only, never its local directory
    assert "Measured evidence" not in text  # the tiny model was trained without evidence


def test_the_card_names_the_evidence_a_model_was_prompted_with(model_dir):
    manifest = json.loads((model_dir / "data_manifest.json").read_text())
    manifest["evidence"] = {"kinds": ["components", "average_response"]}
    (model_dir / "data_manifest.json").write_text(json.dumps(manifest))
    write_model_card(model_dir)
    assert "Measured evidence" not in (model_dir / "README.md").read_text()  # no index copied
    (model_dir / "evidence_index.json").write_text("{}")
    write_model_card(model_dir)
    assert (
        "- Measured evidence in its prompts: `components`, `average_response` "
        "(`evidence_index.json`"
    ) in (model_dir / "README.md").read_text()


def test_evaluate_output_becomes_model_index_metrics_per_held_out_kind(model_dir, tmp_path):
    evaluation = _evaluation_dir(tmp_path, model_dir)
    write_model_card(model_dir, eval_results=[evaluation_dir_summary(evaluation, model_dir)])
    meta = _card_metadata((model_dir / "README.md").read_text())
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["name"] == "pbmc-test" and result["dataset"]["split"] == "test"
    got = {(m["type"], m.get("config")): m["value"] for m in result["metrics"]}
    assert got == {  # the sft row over all contexts; baselines, other models, CIs not read
        ("pearson_delta", "all"): 0.5,
        ("pearson_delta", "single"): 0.6,
        ("pearson_delta", "combo"): 0.7,
        ("pearson_delta_top20", "all"): 0.25,
        ("pearson_delta_top20", "single"): 0.25,
        ("pearson_delta_top20", "combo"): 0.25,
        ("mae", "all"): 0.125,
        ("mae", "single"): 0.125,
        ("mae", "combo"): 0.125,
    }


def test_the_push_plan_reads_an_evaluation_directory(model_dir, tmp_path):
    from cellrlhf.hub.upload_plan import plan_model_upload

    evaluation = _evaluation_dir(tmp_path, model_dir)
    plan = plan_model_upload(model_dir, repo_id="me/x", eval_results=[evaluation])
    (result,) = _card_metadata(plan.card_text)["model-index"][0]["results"]
    got = {(m["type"], m.get("config")): m["value"] for m in result["metrics"]}
    assert got[("pearson_delta", "combo")] == 0.7  # the sft row, not ppo's 1.1


def test_the_card_reads_the_row_named_for_the_model_not_the_added_rows(model_dir, tmp_path):
    # `cellrlhf evaluate` adds sft_grammar (and grpo_last) rows for the same directory
    evaluation = _evaluation_dir(tmp_path, model_dir)
    manifest = json.loads((evaluation / "manifest.json").read_text())
    manifest["models"] = {
        "sft": {"dir": str(model_dir)},
        "sft_grammar": {"dir": str(model_dir)},
        "ppo": {"dir": str(tmp_path / "ppo")},
    }
    (evaluation / "manifest.json").write_text(json.dumps(manifest))
    summary = evaluation_dir_summary(evaluation, model_dir)
    assert summary.extra["model"] == "sft"


def test_an_unread_evaluation_directory_is_refused_with_the_reader_named(model_dir, tmp_path):
    evaluation = _evaluation_dir(tmp_path, model_dir)
    with pytest.raises(ValueError, match="evaluation_dir_summary"):
        write_model_card(model_dir, eval_results=[evaluation])


def test_any_stage_directory_is_refused_not_read_as_metrics(model_dir, tmp_path):
    # a dataset directory's manifest.json has numbers (cells, genes): never model quality
    stage = tmp_path / "data"
    stage.mkdir()
    (stage / "manifest.json").write_text(json.dumps({"format": "cellrlhf.dataset", "n": 3}))
    with pytest.raises(ValueError, match="output directory of a cellrlhf stage"):
        write_model_card(model_dir, eval_results=[stage])
    # a folder of plain evaluation files is read
    files = tmp_path / "files"
    files.mkdir()
    (files / "eval.json").write_text(json.dumps({"metrics": {"pearson_delta": 0.4}}))
    card = write_model_card(model_dir, eval_results=[files]).read_text()
    assert "pearson_delta" in card and "0.4" in card


@pytest.mark.slow
def test_a_trained_stage_saves_the_project_card(tmp_path):
    from cellrlhf.cli import main
    from tests.fixtures.tiny_data import write_tiny_dataset
    from tests.fixtures.tiny_model import tiny_args

    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "pretrained"
    argv = tiny_args("pretrain", data, out, "--max_steps", "2")
    assert main(["pretrain", *argv]) == 0
    text = (out / "README.md").read_text()
    assert "fine-tuned version of" not in text and "license: license" not in text
    assert "- Stage: `pretrain`" in text
    assert "# pretrained" in text  # named after the output directory, not the staging folder
