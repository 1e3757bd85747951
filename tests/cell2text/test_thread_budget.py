"""numba's kernels must not change PyTorch's thread count (issue found 2026-12-06: a parallel
numba kernel on the OpenMP layer set torch to every core under OMP_NUM_THREADS=1)."""

import os
import subprocess
import sys
import textwrap

import pytest

from cellrlhf.cell2text.thread_budget import omp_thread_budget

# encode a matrix large enough for the parallel kernels (> 100,000 stored values), then report
# torch's and numba's thread counts
_SCRIPT = textwrap.dedent(
    """
    import sys
    if sys.argv[1] == "numba-first":
        import numba  # imported by another package before cellrlhf: its pool is already sized
    import cellrlhf.cell2text
    import torch
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp
    import numba
    from cellrlhf.cell2text import encode
    X = sp.random(3000, 400, density=0.2, format="csr", random_state=0, dtype=np.float32)
    adata = ad.AnnData(X)
    adata.var_names = [f"G{i}" for i in range(400)]
    torch.ones(4) + 1
    encode(adata)
    torch.ones(4) + 1
    print(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    """
)


def _run(order: str, **env) -> tuple[int, int]:
    full = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    full.update(env)
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, order],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    torch_threads, numba_threads = out.stdout.split()[-2:]
    return int(torch_threads), int(numba_threads)


@pytest.mark.parametrize("order", ["cellrlhf-first", "numba-first"])
def test_torch_keeps_omp_num_threads_after_numba_kernels(order):
    torch_threads, numba_threads = _run(order, OMP_NUM_THREADS="1")
    assert torch_threads == 1
    if order == "cellrlhf-first":
        assert numba_threads == 1  # the pool is sized from OMP_NUM_THREADS


def test_a_numba_thread_count_the_user_set_wins():
    torch_threads, numba_threads = _run(
        "cellrlhf-first", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="2"
    )
    assert numba_threads == 2 and torch_threads == 1


@pytest.mark.parametrize(
    "value, expected", [("", None), ("abc", None), ("0", None), ("-2", None), ("3", 3), (" 2 ", 2)]
)
def test_omp_thread_budget(monkeypatch, value, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert omp_thread_budget() == expected
