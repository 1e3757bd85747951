"""What a trained model or an evaluation was produced with, recorded next to it.

A figure that does not reproduce has to be traced to what differed between two runs of the
same command, data and seed: package versions, thread settings, hardware. Nothing recorded them
when seed 0 of the unseen-single recipe gave other SFT models on a re-run (BENCHMARKS, SFT
diagnosis, 2026-12-07), so the cause could only be narrowed down by elimination.
:func:`run_environment` is what every model directory's ``cellrlhf.json`` and every evaluation's
``manifest.json`` record under ``environment``.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

__all__ = ["THREAD_VARIABLES", "run_environment"]

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
_PACKAGES = ("torch", "transformers", "trl", "accelerate", "deepspeed", "peft", "numpy", "numba")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _accelerator(torch) -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def run_environment() -> dict:
    """The versions, threads and hardware of this process, as plain data.

    Returns
    -------
    dict
        ``python``, ``platform``, ``versions`` (installed distributions among torch,
        transformers, trl, accelerate, deepspeed, peft, numpy and numba; ``None`` when not
        installed), ``torch_threads`` (:func:`torch.get_num_threads` now), ``numba_threads``
        (numba's pool size when numba is already imported, else ``None``: recording never
        imports numba), ``thread_variables`` (the
        values of ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``NUMBA_NUM_THREADS``, ``None``
        when unset), ``cpu_count`` and ``accelerator`` (``cpu``, ``mps`` or ``cuda: <name> xN``).
    """
    import torch

    numba = sys.modules.get("numba")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in _PACKAGES},
        "torch_threads": torch.get_num_threads(),
        "numba_threads": int(numba.get_num_threads()) if numba is not None else None,
        "thread_variables": {name: os.environ.get(name) for name in THREAD_VARIABLES},
        "cpu_count": os.cpu_count(),
        "accelerator": _accelerator(torch),
    }
