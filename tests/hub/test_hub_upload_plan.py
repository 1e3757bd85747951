"""The exact commit a push makes: files, exclusions, pickle refusal, model card, dataset layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from cellrlhf.hub.push import cli as push_cli
from cellrlhf.hub.upload_plan import plan_dataset_upload, plan_model_upload
from cellrlhf.sft.model_files import UnsafeModelError, check_safe_weights, looks_like_hub_id


def _card_metadata(card_text: str) -> dict:
    assert card_text.startswith("---\n")
    return yaml.safe_load(card_text.split("---\n")[1])


@pytest.fixture
def model_dir(tmp_path):
    """A model directory in the saved-model contract, plus the junk a training run leaves."""
    from safetensors.numpy import save_file

    d = tmp_path / "sft_model"
    d.mkdir()
    save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(d / "model.safetensors"))
    for name, payload in {
        "config.json": {"model_type": "llama"},
        "generation_config.json": {"eos_token_id": 2},
        "tokenizer.json": {"model": {}},
        "tokenizer_config.json": {"chat_template": "x"},
        "gene_vocab.json": {"format": "cellrlhf.gene_vocab", "genes": ["CD3E", "LYZ", "MS4A1"]},
        "expression_decoder.json": {"format": "cellrlhf.expression_decoder"},
        "cellrlhf.json": {
            "format": "cellrlhf.model",
            "stage": "ppo",
            "tokenizer_mode": "gene_tokens",
            "base_model": "org/cell-base-1b",
        },
        "data_manifest.json": {
            "name": "norman2019",
            "simulated": False,
            "sources": [{"path": "../someone-private/data/norman.h5ad"}],
            "counts": {"train": 1000, "test": 100},
            "hub_datasets": ["org/norman-cells"],
        },
        "eval_results.json": {
            "dataset": "norman2019",
            "split": "test",
            "created": "2026-01-01T00:00:00",
            "metrics": {
                "pearson_delta": 0.41,
                "valid_gene_fraction": 0.97,
                "nested": {"mse": 0.02},
            },
        },
    }.items():
        (d / name).write_text(json.dumps(payload))
    (d / "training_config.yaml").write_text("learning_rate: 1.0e-4\nseed: 7\n")
    (d / "chat_template.jinja").write_text("{{ messages }}")
    # junk that must not be uploaded
    (d / "training_args.bin").write_bytes(b"pickle")
    (d / "optimizer.pt").write_bytes(b"pickle")
    (d / "trainer_state.json").write_text("{}")
    (d / "checkpoint-10").mkdir()
    (d / "checkpoint-10" / "model.safetensors").write_bytes(b"x")
    (d / "runs").mkdir()
    return d


def test_model_plan_uploads_exactly_the_model_files_and_a_card(model_dir):
    plan = plan_model_upload(model_dir, repo_id="me/cell-ppo")
    assert plan.repo_type == "model"
    assert plan.paths == sorted(
        [
            "README.md",
            "cellrlhf.json",
            "chat_template.jinja",
            "config.json",
            "data_manifest.json",
            "eval_results.json",
            "expression_decoder.json",
            "gene_vocab.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "training_config.yaml",
        ]
    )
    # file operations point at the directory's own files, byte for byte
    ops = {op.path_in_repo: op for op in plan.operations}
    assert ops["model.safetensors"].path_or_fileobj == str(model_dir / "model.safetensors")
    assert plan.sizes()["model.safetensors"] == (model_dir / "model.safetensors").stat().st_size
    assert ops["README.md"].path_or_fileobj == plan.card_text.encode()


def test_model_card_metadata_and_text(model_dir):
    plan = plan_model_upload(model_dir, repo_id="me/cell-ppo", license="apache-2.0")
    meta = _card_metadata(plan.card_text)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation"
    assert {"single-cell", "cell2sentence", "cellrlhf", "rlhf", "ppo"} <= set(meta["tags"])
    assert meta["base_model"] == "org/cell-base-1b"
    assert meta["datasets"] == ["org/norman-cells"]
    assert meta["license"] == "apache-2.0"
    results = meta["model-index"][0]["results"]
    values = {m["name"]: m["value"] for r in results for m in r["metrics"]}
    assert values == {"pearson_delta": 0.41, "valid_gene_fraction": 0.97, "nested/mse": 0.02}
    assert results[0]["dataset"]["split"] == "test"
    text = plan.card_text
    assert 'CellLM.from_pretrained("me/cell-ppo")' in text
    assert "cellrlhf chat --model me/cell-ppo" in text
    assert "## Intended use" in text and "Out of scope" in text
    assert "| pearson_delta | 0.41 |" in text
    assert "| learning_rate | 0.0001 |" in text and "| seed | 7 |" in text  # key hyperparameters
    assert "someone-private" not in text  # local source paths are not published
    assert "norman.h5ad" in text


def test_card_without_eval_or_hub_base_model(model_dir):
    (model_dir / "eval_results.json").unlink()
    info = json.loads((model_dir / "cellrlhf.json").read_text())
    info["base_model"] = str(model_dir.parent / "pretrained")  # a local path: not metadata
    (model_dir / "cellrlhf.json").write_text(json.dumps(info))
    plan = plan_model_upload(model_dir, repo_id="me/x")
    meta = _card_metadata(plan.card_text)
    assert "base_model" not in meta and "model-index" not in meta
    assert "No evaluation results" in plan.card_text


def test_latest_external_eval_results_replace_the_directory_ones(model_dir, tmp_path):
    newer = tmp_path / "eval_new.json"
    newer.write_text(json.dumps({"created": "2026-06-01T00:00:00", "pearson_delta": 0.55}))
    plan = plan_model_upload(model_dir, repo_id="me/x", eval_results=[newer])
    ops = {op.path_in_repo: op for op in plan.operations}
    assert ops["eval_results.json"].path_or_fileobj == str(newer)
    assert "| pearson_delta | 0.55 |" in plan.card_text
    assert plan.paths.count("eval_results.json") == 1


def test_materialized_plan_is_what_the_repo_holds(model_dir, tmp_path):
    plan = plan_model_upload(model_dir, repo_id="me/x")
    out = plan.materialize(tmp_path / "repo")
    assert sorted(p.name for p in out.iterdir()) == plan.paths
    assert (out / "model.safetensors").read_bytes() == (
        model_dir / "model.safetensors"
    ).read_bytes()
    assert (out / "README.md").read_text() == plan.card_text


def test_pickle_only_weights_are_refused(tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(UnsafeModelError, match="pickle"):
        check_safe_weights(d)
    with pytest.raises(UnsafeModelError, match="safetensors"):
        plan_model_upload(d, repo_id="me/x")


def test_directory_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no model weights"):
        check_safe_weights(tmp_path)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("org/name", True),
        ("me/cell-ppo.v2", True),
        ("name", False),
        ("a/b/c", False),
        ("../x", False),
    ],
)
def test_hub_id_shape(value, ok):
    assert looks_like_hub_id(value) is ok


def test_push_cli_dry_run_prints_the_plan(model_dir, capsys):
    assert push_cli(["--model", str(model_dir), "--repo-id", "me/cell-ppo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would commit to model repository me/cell-ppo: 13 files" in out
    assert "model.safetensors" in out and "optimizer.pt" not in out


def test_push_cli_rejects_bad_repo_id(model_dir, capsys):
    assert push_cli(["--model", str(model_dir), "--repo-id", "no-slash", "--dry-run"]) == 2
    assert "ORG_OR_USER/NAME" in capsys.readouterr().err


@pytest.fixture
def dataset_dir(tmp_path):
    from datasets import Dataset, DatasetDict

    d = tmp_path / "dataset"
    d.mkdir()
    (d / "manifest.json").write_text(
        json.dumps(
            {
                "format": "cellrlhf.dataset",
                "name": "tiny",
                "simulated": True,
                "sources": ["/data/x.h5ad"],
            }
        )
    )
    (d / "gene_vocab.json").write_text(json.dumps({"genes": ["A", "B"]}))
    (d / "expression_decoder.json").write_text("{}")
    Dataset.from_dict({"text": ["<cell> A B </cell>"] * 5}).save_to_disk(str(d / "pretrain"))
    msgs = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    columns = {"messages": msgs, "task": ["t"], "perturbation": [""], "cell_context": ["c"]}
    DatasetDict(
        {
            "train": Dataset.from_dict({k: v * 4 for k, v in columns.items()}),
            "test": Dataset.from_dict(columns),
        }
    ).save_to_disk(str(d / "sft"))
    return d


def test_dataset_plan_writes_parquet_configs_and_card(dataset_dir):
    import datasets

    with plan_dataset_upload(dataset_dir, repo_id="me/tiny-cells") as plan:
        assert plan.repo_type == "dataset"
        assert plan.paths == [
            "README.md",
            "data/pretrain/train-00000-of-00001.parquet",
            "data/sft/test-00000-of-00001.parquet",
            "data/sft/train-00000-of-00001.parquet",
            "expression_decoder.json",
            "gene_vocab.json",
            "manifest.json",
        ]
        meta = _card_metadata(plan.card_text)
        configs = {c["config_name"]: c["data_files"] for c in meta["configs"]}
        assert configs["sft"] == [
            {"split": "train", "path": "data/sft/train-*.parquet"},
            {"split": "test", "path": "data/sft/test-*.parquet"},
        ]
        assert "synthetic" in meta["tags"] and "single-cell" in meta["tags"]
        assert "simulated" in plan.card_text
        ops = {op.path_in_repo: op.path_or_fileobj for op in plan.operations}
        sft_train = datasets.Dataset.from_parquet(ops["data/sft/train-00000-of-00001.parquet"])
        assert sft_train.num_rows == 4 and sft_train[0]["messages"][1]["content"] == "a"
        staging = plan._staging
    assert not staging.exists()  # staged shards removed with the plan


def test_dataset_plan_needs_a_manifest(tmp_path):
    from cellrlhf.data.layout import DatasetDirError

    with pytest.raises(DatasetDirError, match="has no manifest.json: not a built cellrlhf"):
        plan_dataset_upload(tmp_path)


def test_trainer_bookkeeping_is_not_a_metric(tmp_path):
    from cellrlhf.sft.eval_results import latest_eval

    f = tmp_path / "eval_results.json"
    f.write_text(
        json.dumps(
            {
                "epoch": 1.0,
                "eval_loss": 3.4,
                "eval_runtime": 13.1,
                "eval_samples_per_second": 98.4,
                "eval_num_tokens": 1420603.0,
                "eval_gen_pearson_delta": 0.22,
                "flag": True,
            }
        )
    )
    assert latest_eval([f]).metrics == {"eval_loss": 3.4, "eval_gen_pearson_delta": 0.22}
