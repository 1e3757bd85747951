from pathlib import Path

import pytest

from cellrlhf.data.config import ConfigError, DataBuildConfig, apply_overrides, load_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "data"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_parse_and_round_trip(path):
    config = load_config(path)
    assert DataBuildConfig.from_dict(config.to_dict()) == config


def test_required_configs_exist():
    assert {"norman_mcfaline", "simulated", "pbmc68k"} <= {
        p.stem for p in CONFIG_DIR.glob("*.yaml")
    }


def test_overrides_use_dotted_paths_and_yaml_values():
    config = load_config(
        CONFIG_DIR / "simulated.yaml",
        [
            "split.kind=unseen_combo",
            "sft.tasks.cell_annotation.max_examples=7",
            "sentences.top_k=null",
        ],
    )
    assert config.split.kind == "unseen_combo"
    assert config.sft.tasks["cell_annotation"].max_examples == 7
    assert config.sentences.top_k is None
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("split.kind=leave_one_out", "split.kind"),
        ("sentences.topk=5", r"unknown key\(s\) \['topk'\] in 'sentences'"),
        ("sft.tasks.cell_typing.max_examples=3", "unknown task 'cell_typing'"),
        ("expression.transform=log2", "expression.transform"),
        ("de.method=ttest", "de.method"),
        ("rl.context=bulk", "rl.context"),
        ("decoder.method=knn", "decoder.method"),
        ("decoder.n_neighbors=0", "n_neighbors"),
        ("source.path=x.h5ad", "exactly one of"),
        ("nonsense", "section.key=value"),
    ],
)
def test_bad_values_name_the_setting(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(CONFIG_DIR / "simulated.yaml", [override])


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="configs/data"):
        load_config("no/such/config.yaml")


def test_neighbour_options_are_stored_only_for_the_neighbours_decoder():
    lines = load_config(CONFIG_DIR / "simulated.yaml", ["decoder.n_neighbors=7"])
    assert "n_neighbors" not in lines.to_dict()["decoder"]  # fingerprints as before the option
    nb = load_config(CONFIG_DIR / "simulated.yaml", ["decoder.method=neighbours"])
    assert nb.to_dict()["decoder"] | {"max_cells": None} == {
        "method": "neighbours",
        "max_cells": None,
        "shrinkage": 10.0,
        "n_neighbors": 20,
        "reference_cells": 5000,
    }
    assert DataBuildConfig.from_dict(nb.to_dict()) == nb
