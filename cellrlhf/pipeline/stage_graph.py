"""Which stages wait for which, and how many threads each may use when stages run side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cellrlhf.pipeline.spec import PipelineSpec, StageSpec

__all__ = ["selected_needs", "ancestors", "parallel_width", "threads_per_stage"]


def selected_needs(spec: PipelineSpec, selected: Sequence[StageSpec]) -> dict[str, tuple[str, ...]]:
    """Each selected stage's needs, restricted to the selected stages.

    A stage left out of the selection (``--only``) is taken as already available, so nothing
    waits for it.
    """
    names = {s.name for s in selected}
    return {s.name: tuple(n for n in spec.needs_of(s) if n in names) for s in selected}


def ancestors(needs: Mapping[str, Sequence[str]]) -> dict[str, frozenset[str]]:
    """Every stage each stage waits for, directly or through others (needs point upwards)."""
    out: dict[str, frozenset[str]] = {}
    for name in needs:  # needs only name earlier stages, so one pass in order is enough
        found: set[str] = set()
        for need in needs[name]:
            found.add(need)
            found |= out.get(need, frozenset())
        out[name] = frozenset(found)
    return out


def parallel_width(names: Sequence[str], before: Mapping[str, frozenset[str]]) -> int:
    """The most stages among ``names`` that could run at the same time (the largest set of which
    none waits for another), by Dilworth's theorem: ``len(names)`` minus a maximum matching of
    the "waits for" order."""
    names = list(names)
    match_of: dict[str, str] = {}  # later stage -> the earlier stage it is matched to

    def augment(earlier: str, seen: set[str]) -> bool:
        for later in names:
            if earlier in before[later] and later not in seen:
                seen.add(later)
                if later not in match_of or augment(match_of[later], seen):
                    match_of[later] = earlier
                    return True
        return False

    matched = sum(augment(name, set()) for name in names)
    return len(names) - matched


def threads_per_stage(
    needs: Mapping[str, Sequence[str]], *, cpu_count: int, max_parallel: int
) -> dict[str, int]:
    """Threads (``OMP_NUM_THREADS``) for each stage of ``needs`` (the stages that will run).

    A stage that can only ever run alone gets every core; one that may overlap others gets
    ``cpu_count // k`` (at least 1), ``k`` being how many stages can run at once with it, capped
    at ``max_parallel``.
    """
    before = ancestors(needs)
    out: dict[str, int] = {}
    for name in needs:
        concurrent = [
            other
            for other in needs
            if other != name and other not in before[name] and name not in before[other]
        ]
        at_once = 1 + (parallel_width(concurrent, before) if concurrent else 0)
        out[name] = max(1, cpu_count // min(max_parallel, at_once))
    return out
