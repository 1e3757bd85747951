"""Collect a reward batch from every training process, so that prompt groups are whole.

TRL computes rewards on each process's own slice of completions and gathers the numbers
afterwards. A group reward needs all ``G`` completions of a prompt, and with several processes
those can sit on different ranks. :func:`gather_reward_batch` all-gathers the (small, text)
reward inputs when ``torch.distributed`` is running with more than one process; every rank
then scores the full batch identically and keeps its own slice.
"""

from __future__ import annotations

import logging

__all__ = ["distributed_world_size", "gather_reward_batch"]

logger = logging.getLogger(__name__)


def distributed_world_size() -> int:
    """Number of processes in the default ``torch.distributed`` group (1 when not running)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return 1
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return int(dist.get_world_size())


def gather_reward_batch(local: dict[str, list]) -> tuple[dict[str, list], slice]:
    """All-gather per-completion lists from every process, in rank order.

    Parameters
    ----------
    local
        Column name -> this process's list (all lists the same length).

    Returns
    -------
    batch
        Column name -> the concatenated lists of all ranks.
    own
        The slice of the concatenated batch that belongs to this process.
    """
    lengths = {len(v) for v in local.values()}
    if len(lengths) > 1:
        raise ValueError(f"reward columns have different lengths: {sorted(lengths)}.")
    n_local = lengths.pop() if lengths else 0
    if distributed_world_size() == 1:
        return local, slice(0, n_local)
    import torch.distributed as dist

    parts: list[dict[str, list] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    rank = dist.get_rank()
    start = sum(len(next(iter(p.values()), [])) for p in parts[:rank])
    batch = {key: [item for part in parts for item in part[key]] for key in local}
    return batch, slice(start, start + n_local)
