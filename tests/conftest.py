"""Fixtures shared by every stage's tests."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

# Two cores in CI: one thread per process keeps tiny runs fast (oversubscription costs 20-50x).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _restore_package_logger():
    """Undo what a CLI run in one test does to the ``cellrlhf`` logger (level, handlers)."""
    logger = logging.getLogger("cellrlhf")
    saved = (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
    yield
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate, logger.disabled = saved[2], saved[3]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data directory (``CELLRLHF_DATA_DIR``); tests that need it skip when absent."""
    value = os.environ.get("CELLRLHF_DATA_DIR")
    if not value or not Path(value).is_dir():
        pytest.skip("real data directory not available (set CELLRLHF_DATA_DIR)")
    return Path(value)


ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture
def chromium_page():
    """A page of Debian's headless Chromium driven by playwright (skips when either is absent)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.set_default_timeout(90_000)
        yield page
        browser.close()
