"""The tiny trained model of the chat tests, for the Hub round trips (built once per session)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _tiny_model_module():
    name = "tiny_cell_model"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "chat" / "tiny_cell_model.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return _tiny_model_module().build_tiny_model(tmp_path_factory.getbasetemp() / "tiny_cell_model")
