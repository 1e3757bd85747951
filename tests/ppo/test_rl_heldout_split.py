"""Which rl/ split the held-out monitor selects the policy on."""

import logging
import shutil

import pytest
from tiny_rl_data import HELDOUT

from cellrlhf.ppo.configs import CellRLScriptArguments
from cellrlhf.ppo.rl_run import open_rl_data


@pytest.fixture()
def dataset_with_validation(tmp_path, rl_dataset_dir):
    """The tiny data set with its first held-out perturbation moved to rl/validation."""
    from datasets import DatasetDict, load_from_disk

    out = tmp_path / "data"
    shutil.copytree(rl_dataset_dir, out)
    rl = load_from_disk(str(rl_dataset_dir / "rl"))
    validation = rl["test"].filter(lambda row: row["perturbation"] == HELDOUT[0])
    test = rl["test"].filter(lambda row: row["perturbation"] != HELDOUT[0])
    shutil.rmtree(out / "rl")
    DatasetDict({"train": rl["train"], "validation": validation, "test": test}).save_to_disk(
        str(out / "rl")
    )
    return out


def test_validation_perturbations_are_the_default_heldout_split(dataset_with_validation):
    data = open_rl_data(CellRLScriptArguments(dataset_dir=str(dataset_with_validation)), seed=0)
    assert data.heldout_split == "validation"
    assert list(data.heldout["perturbation"]) == [HELDOUT[0]]
    explicit = CellRLScriptArguments(
        dataset_dir=str(dataset_with_validation), dataset_test_split="test"
    )
    data = open_rl_data(explicit, seed=0)
    assert data.heldout_split == "test" and list(data.heldout["perturbation"]) == [HELDOUT[1]]


def test_without_validation_the_monitor_uses_test_and_warns(rl_dataset_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="cellrlhf"):
        data = open_rl_data(CellRLScriptArguments(dataset_dir=str(rl_dataset_dir)), seed=0)
    assert data.heldout_split == "test"
    assert sorted(data.heldout["perturbation"]) == sorted(HELDOUT)
    assert "optimistic" in caplog.text and "n_validation_perturbations" in caplog.text


def test_a_missing_split_is_named(rl_dataset_dir):
    from cellrlhf.data.layout import DatasetDirError

    args = CellRLScriptArguments(dataset_dir=str(rl_dataset_dir), dataset_test_split="validation")
    with pytest.raises(DatasetDirError, match="no 'validation' split"):
        open_rl_data(args, seed=0)
