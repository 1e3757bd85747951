"""The environment recorded next to every model and evaluation (``cellrlhf.run_environment``)."""

import json
import sys
from importlib import metadata

import pytest

from cellrlhf.run_environment import THREAD_VARIABLES, run_environment


def test_records_the_thread_count_torch_uses_now(torch_threads):
    torch_threads(1)
    assert run_environment()["torch_threads"] == 1
    torch_threads(2)
    assert run_environment()["torch_threads"] == 2


def test_records_the_thread_variables_set_and_unset(monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert run_environment()["thread_variables"] == {
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": None,
        "NUMBA_NUM_THREADS": None,
    }


def test_versions_hardware_and_json(monkeypatch):
    monkeypatch.delitem(sys.modules, "numba", raising=False)
    env = run_environment()
    assert env["versions"]["torch"] == metadata.version("torch")
    assert env["versions"]["trl"] == "1.12.0"
    assert env["numba_threads"] is None  # numba not imported: not started by recording
    assert "numba" not in sys.modules
    assert env["accelerator"] == "cpu" and env["cpu_count"] >= 1
    assert json.loads(json.dumps(env)) == env


def test_numba_pool_recorded_once_imported():
    numba = pytest.importorskip("numba")
    assert run_environment()["numba_threads"] == numba.get_num_threads()
