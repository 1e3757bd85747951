"""``cellrlhf pipeline --dry-run``: the stages a pipeline file expands to, without running any."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from cellrlhf.pipeline.spec import PipelineSpec
from cellrlhf.pipeline.stage_graph import selected_needs
from cellrlhf.pipeline.stage_marker import is_finished

__all__ = ["plan_lines"]


def plan_lines(spec: PipelineSpec, *, only: Sequence[str] | None = None) -> list[str]:
    """One block per stage: number, name, whether it would run, what it waits for, its command.

    Parameters
    ----------
    spec
        The loaded (sweep-expanded) pipeline.
    only
        Show just these stages, as ``--only`` would run them (a name as written in the file
        stands for all its folds and seeds).

    Returns
    -------
    Lines to print, a header first::

        runs/x: 3 stages, max_parallel 2, sweep fold [0, 1]
        [1/3] data_f0 (to run: not run yet)
            cellrlhf data build --fold 0 --out runs/x/f0/data
    """
    if only:
        only = spec.stage_names(only)
    selected = [s for s in spec.stages if not only or s.name in only]
    needs = selected_needs(spec, selected)
    sweep = ", ".join(f"{axis} {list(values)}" for axis, values in spec.sweep.items())
    lines = [
        f"{spec.run_dir}: {len(selected)} stages, max_parallel {spec.max_parallel}"
        + (f", sweep {sweep}" if sweep else "")
    ]
    for number, stage in enumerate(selected, 1):
        finished, reason = is_finished(spec.run_dir, stage)
        status = f"done, skipped: {reason}" if finished else f"to run: {reason}"
        lines.append(f"[{number}/{len(selected)}] {stage.name} ({status})")
        if needs[stage.name]:
            lines.append(f"    needs {', '.join(needs[stage.name])}")
        launcher = (
            f"accelerate launch --config_file {shlex.quote(stage.accelerate_config)} -m "
            if stage.accelerate_config
            else ""
        )
        lines.append(f"    {launcher}{shlex.join(['cellrlhf', *stage.command])}")
    return lines
