"""Pairs longer than max_length: TRL drops them silently; cellrlhf says so, or stops."""

from __future__ import annotations

import logging

import pytest
import rm_fixtures
from test_reward_model import _train

from cellrlhf.reward.train import check_kept_pairs

rm_dataset_dir = rm_fixtures.rm_dataset_dir
rm_preferences_dir = rm_fixtures.rm_preferences_dir
rm_sft_dir = rm_fixtures.rm_sft_dir


def test_nothing_dropped_is_silent(caplog):
    with caplog.at_level(logging.WARNING):
        check_kept_pairs(10, 10, 384)
    assert caplog.records == []


def test_some_dropped_warns_with_counts(caplog):
    with caplog.at_level(logging.WARNING):
        check_kept_pairs(8, 6, 64)
    (record,) = caplog.records
    assert "2 of 8 preference pairs (25%)" in record.getMessage()
    assert "max_length=64" in record.getMessage()


def test_all_dropped_is_an_error_naming_the_fix():
    with pytest.raises(ValueError, match=r"all 5 preference pairs .* max_length=16 .*--max_length"):
        check_kept_pairs(5, 0, 16)


def test_training_with_too_short_max_length_stops_before_training(
    rm_sft_dir, rm_preferences_dir, tmp_path
):
    with pytest.raises(ValueError, match="longer than max_length=4 tokens"):
        _train(rm_sft_dir, rm_preferences_dir, tmp_path / "out", "--max_length", "4")
    assert not (tmp_path / "out" / "model.safetensors").exists()
