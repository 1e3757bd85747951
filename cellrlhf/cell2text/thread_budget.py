"""Keep numba's kernels inside the process's thread budget (``OMP_NUM_THREADS``).

numba sizes its worker pool from ``NUMBA_NUM_THREADS`` (default: every core) and ignores
``OMP_NUM_THREADS``. Worse, its OpenMP threading layer shares ``libgomp`` with PyTorch: the first
parallel numba kernel (decoding a batch of cell sentences, ranking cells) sets the process's
OpenMP thread count to numba's, and from then on PyTorch, asked for ``OMP_NUM_THREADS=1``, runs
its ops on every core. Two training processes on a 2-core machine then oversubscribe it: an SFT
step took 3.3 s instead of 0.6 s (2026-12-06, `cellrlhf pipeline` with ``OMP_NUM_THREADS=1``).

:func:`align_numba_threads` gives numba the ``OMP_NUM_THREADS`` budget when the user set one and
no ``NUMBA_NUM_THREADS`` (it must run before numba is imported: ``cellrlhf`` commands and
``import cellrlhf.cell2text`` call it). :func:`keep_torch_threads` restores PyTorch's thread count
around a kernel, for numba imported earlier by another package.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

__all__ = ["align_numba_threads", "keep_torch_threads", "kernel_threads", "omp_thread_budget"]

_PARALLEL_MIN_WORK = 100_000  # below this many stored values, waking worker threads costs more


def omp_thread_budget() -> int | None:
    """``OMP_NUM_THREADS`` as a positive int, or ``None`` when unset or not a positive int."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def align_numba_threads() -> None:
    """Default ``NUMBA_NUM_THREADS`` to ``OMP_NUM_THREADS`` (a value the user set wins).

    Effective only before numba is imported (it reads the variable once). Once numba is
    imported this does nothing: even asking its pool for fewer threads starts the pool, which is
    what changes PyTorch's count; the kernels' :func:`keep_torch_threads` covers that case.
    """
    budget = omp_thread_budget()
    if budget is None or "NUMBA_NUM_THREADS" in os.environ or "numba" in sys.modules:
        return
    os.environ["NUMBA_NUM_THREADS"] = str(budget)


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore PyTorch's intra-op thread count after the block (if torch is imported)."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if before is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def kernel_threads(work: int) -> Iterator[None]:
    """Run numba kernels on one thread when ``work`` (stored values) is small.

    Waking the worker threads of a parallel kernel costs more than ranking a few thousand
    values, and much more on a loaded machine. Results never depend on the thread count.
    PyTorch's thread count is restored afterwards (numba's OpenMP layer changes it).
    """
    import numba

    if work >= _PARALLEL_MIN_WORK or numba.get_num_threads() == 1:
        with keep_torch_threads():
            yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with keep_torch_threads():
            yield
    finally:
        numba.set_num_threads(before)
