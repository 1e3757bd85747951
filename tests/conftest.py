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


def _reset_package_loggers() -> None:
    """Every ``cellrlhf`` logger back to how a fresh interpreter has it: no level of its own, no
    handlers, propagating, enabled."""
    for name in ["cellrlhf", *logging.root.manager.loggerDict]:
        if name.split(".")[0] != "cellrlhf":
            continue
        logger = logging.getLogger(name)
        logger.setLevel(logging.NOTSET)
        logger.handlers[:] = []
        logger.propagate, logger.disabled = True, False


@pytest.fixture(autouse=True)
def _clean_package_loggers():
    """Each test starts and ends with clean ``cellrlhf`` loggers: a CLI run (in a test or in a
    module-scoped fixture set up before it) sets the package level, e.g. WARNING in the chat
    CLI or the training process level, which would otherwise hide INFO records from later tests
    whatever ``caplog.at_level`` says."""
    _reset_package_loggers()
    yield
    _reset_package_loggers()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny cell model directory (saved-model contract) of the chat and hub tests, trained
    once per session (:mod:`tests.fixtures.tiny_cell_model`)."""
    from tests.fixtures.tiny_cell_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.getbasetemp() / "tiny_cell_model")


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


@pytest.fixture
def torch_threads():
    """``torch.set_num_threads`` for a test; the process's thread count is restored after it."""
    import torch

    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)
