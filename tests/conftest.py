"""Fixtures shared by every stage's tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores in CI: one thread per process keeps tiny runs fast (oversubscription costs 20-50x).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data directory (``CELLRLHF_DATA_DIR``); tests that need it skip when absent."""
    value = os.environ.get("CELLRLHF_DATA_DIR")
    if not value or not Path(value).is_dir():
        pytest.skip("real data directory not available (set CELLRLHF_DATA_DIR)")
    return Path(value)
