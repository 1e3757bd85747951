"""Pipeline YAML: every stage of a run written down in one file.

A pipeline file names a run directory and an ordered list of stages. Each stage is one
``cellrlhf`` subcommand with its arguments, optionally launched through ``accelerate launch`` with
an accelerate config, so a GPU user swaps model size or hardware by editing YAML, not code::

    run_dir: runs/demo
    variables: {data_config: configs/data/simulated.yaml}
    stages:
      - name: data
        command: [data, build, --config, "{data_config}", --output_dir, "{run_dir}/data"]
        outputs: ["{run_dir}/data/manifest.json"]
      - name: sft
        accelerate_config: configs/accelerate/cpu.yaml
        command: [sft, --config, configs/sft/cpu_demo.yaml, --output_dir, "{run_dir}/sft"]
        outputs: ["{run_dir}/sft/model.safetensors"]
        resumable: true

``{name}`` placeholders are filled from ``run_dir`` and ``variables`` (command-line overrides win;
variables may use each other).

Stages run in file order by default: a stage without ``needs`` waits for every earlier stage. A
stage with ``needs: [data, sft]`` waits only for those (earlier) stages, and the top-level
``max_parallel: N`` lets up to N ready stages run at once, like ``make -j N``.

A top-level ``sweep: {folds: K, seeds: [...]}`` and ``per: fold`` / ``per: seed`` /
``per: [fold, seed]`` on stages run a stage once per fold and/or seed, with ``{fold}`` and
``{seed}`` filled in; see :mod:`cellrlhf.pipeline.sweep` for naming, ``needs`` and ``foreach``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from cellrlhf.pipeline.sweep import (
    Placeholders,
    SweepError,
    expand_command,
    expanded_name,
    fill,
    matching_points,
    parse_per,
    parse_sweep,
    sweep_points,
)

__all__ = ["StageSpec", "PipelineSpec", "load_pipeline", "PipelineConfigError"]


class PipelineConfigError(ValueError):
    """A pipeline YAML that cannot be run as written."""


@dataclass(frozen=True)
class StageSpec:
    """One stage: a ``cellrlhf`` subcommand and what it leaves behind.

    Attributes
    ----------
    name
        Unique stage name (also the name of its done-marker).
    command
        Arguments after ``cellrlhf`` (``["sft", "--config", ...]``).
    outputs
        Files the stage must have written for it to count as finished.
    accelerate_config
        Run through ``accelerate launch --config_file <this> -m cellrlhf ...`` when set.
    resumable
        Training stages: on a re-run after a kill, pass ``--resume_from_checkpoint`` when the
        output directory holds a checkpoint.
    output_dir
        The stage's output directory (for checkpoint discovery and the report).
    summary
        Optional file (JSON) whose top-level numbers form the stage's one-line summary.
    needs
        Names of the earlier stages this one waits for; ``None`` (the default) means every
        earlier stage.
    template
        The stage's name as written in the file (``sft`` for ``sft_f0_s1``).
    point
        Its sweep values, e.g. ``(("fold", 0), ("seed", 1))``; ``()`` for a stage run once.
    """

    name: str
    command: tuple[str, ...]
    outputs: tuple[str, ...] = ()
    accelerate_config: str | None = None
    resumable: bool = False
    output_dir: str | None = None
    summary: str | None = None
    needs: tuple[str, ...] | None = None
    template: str | None = None
    point: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class PipelineSpec:
    """A parsed, placeholder-resolved, sweep-expanded pipeline.

    ``max_parallel`` is how many stages whose needs are met may run at the same time;
    ``sweep`` maps each swept axis (``fold``, ``seed``) to its values (empty: no sweep).
    """

    run_dir: Path
    stages: tuple[StageSpec, ...]
    variables: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)
    max_parallel: int = 1
    sweep: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")

    def stage_names(self, names: Sequence[str]) -> list[str]:
        """Stage names for ``names`` (``--only``): a name as written in the file stands for all
        its folds and seeds (``sft`` -> ``sft_f0_s0``, ``sft_f0_s1``, ...).

        Raises
        ------
        KeyError
            A name is neither a stage nor a stage as written in the file.
        """
        known = {s.name for s in self.stages}
        out: list[str] = []
        for name in names:
            found = [name] if name in known else [s.name for s in self.stages if s.template == name]
            if not found:
                raise KeyError(f"unknown stage {name!r}; stages: {[s.name for s in self.stages]}")
            out += found
        return list(dict.fromkeys(out))

    def needs_of(self, stage: StageSpec) -> tuple[str, ...]:
        """The stages ``stage`` waits for: its ``needs``, or every earlier stage by default."""
        if stage.needs is not None:
            return stage.needs
        names = [s.name for s in self.stages]
        return tuple(names[: names.index(stage.name)])


_STAGE_KEYS = {
    "name",
    "command",
    "outputs",
    "accelerate_config",
    "resumable",
    "output_dir",
    "summary",
    "needs",
    "per",
}
_TOP_LEVEL_KEYS = {"run_dir", "variables", "stages", "description", "max_parallel", "sweep"}


def load_pipeline(
    source: str | Path | dict, *, overrides: dict[str, str] | None = None
) -> PipelineSpec:
    """Read, validate and expand a pipeline YAML (a path or an already-parsed mapping).

    Parameters
    ----------
    source
        Path of the YAML file, or its parsed content.
    overrides
        Values for ``variables`` (and ``run_dir``) that win over the file's.

    Raises
    ------
    PipelineConfigError
        The file cannot be run as written; the message names the place and the fix.
    """
    if isinstance(source, dict):
        raw, origin = source, None
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"pipeline file {path} does not exist (see configs/pipeline/).")
        raw, origin = yaml.safe_load(path.read_text()) or {}, str(path)
    try:
        return _load(raw, origin, dict(overrides or {}))
    except SweepError as err:
        raise PipelineConfigError(str(err)) from None


def _load(raw: object, origin: str | None, overrides: dict[str, str]) -> PipelineSpec:
    if not isinstance(raw, dict):
        raise PipelineConfigError(
            f"{origin}: a pipeline file is a mapping with run_dir and stages."
        )
    unknown = set(raw) - _TOP_LEVEL_KEYS
    if unknown:
        raise PipelineConfigError(f"{origin}: unknown top-level keys {sorted(unknown)}.")
    where = origin or "pipeline"
    max_parallel = _max_parallel(raw.get("max_parallel", 1), origin)
    sweep = parse_sweep(raw.get("sweep"), where)
    templates = _variables(raw, overrides, sweep, where)
    # every variable resolved (sweep axes left as placeholders), so a bad one fails here
    shown = Placeholders(templates, {axis: f"{{{axis}}}" for axis in sweep}, ())
    variables = {k: str(shown[k]) for k in templates}

    stages_raw = raw.get("stages")
    if not stages_raw or not isinstance(stages_raw, list):
        raise PipelineConfigError(f"{origin}: 'stages' must be a non-empty list.")
    entries = _check_entries(stages_raw, origin)
    all_names = {str(e["name"]) for e in entries}
    stages: list[StageSpec] = []
    instances: dict[str, list[StageSpec]] = {}  # name in the file -> its expanded stages
    for i, entry in enumerate(entries):
        where = f"{origin or 'pipeline'}: stages[{i}]"
        name = str(entry["name"])
        axes = parse_per(entry, sweep, f"{where} ({name!r})")
        needs = _needs(entry, name, set(instances), all_names, where)
        if needs is None and axes:  # a swept stage waits for its own fold's / seed's stages
            needs = tuple(instances)
        instances[name] = []
        for point in sweep_points(axes, sweep):
            values = Placeholders(templates, point, [a for a in sweep if a not in point])
            stage = _stage(entry, name, point, values, sweep, where)
            if stage.name in {s.name for s in stages}:
                raise PipelineConfigError(f"{where}: stage name {stage.name!r} is used twice.")
            if needs is not None:
                stage = replace(stage, needs=_matched_needs(needs, point, instances))
            instances[name].append(stage)
            stages.append(stage)
    return PipelineSpec(
        Path(variables["run_dir"]),
        tuple(stages),
        variables,
        max_parallel=max_parallel,
        source=origin,
        raw=raw,
        sweep=sweep,
    )


def _variables(
    raw: dict, overrides: dict[str, str], sweep: dict[str, tuple[int, ...]], where: str
) -> dict[str, str]:
    """Variable templates: the file's, then the overrides, then ``run_dir``."""
    variables = {str(k): str(v) for k, v in (raw.get("variables") or {}).items()}
    variables.update({k: v for k, v in overrides.items() if k != "run_dir"})
    taken = sorted(set(variables) & set(sweep))
    if taken:
        raise PipelineConfigError(
            f"{where}: {taken} is a sweep axis, filled per stage; it cannot be a variable or a "
            "--set override (edit the sweep: section instead)."
        )
    run_dir = overrides.get("run_dir") or raw.get("run_dir")
    if not run_dir:
        raise PipelineConfigError(f"{where}: 'run_dir' is required.")
    variables["run_dir"] = str(run_dir)
    return variables


def _check_entries(stages_raw: list, origin: str | None) -> list[dict]:
    """Each stage entry is a mapping with known keys, a name used once and a command list."""
    seen: set[str] = set()
    for i, entry in enumerate(stages_raw):
        where = f"{origin or 'pipeline'}: stages[{i}]"
        if not isinstance(entry, dict) or "name" not in entry or "command" not in entry:
            raise PipelineConfigError(f"{where} needs 'name' and 'command'.")
        bad = set(entry) - _STAGE_KEYS
        if bad:
            raise PipelineConfigError(
                f"{where}: unknown keys {sorted(bad)}; allowed {sorted(_STAGE_KEYS)}."
            )
        name = str(entry["name"])
        if name in seen:
            raise PipelineConfigError(f"{where}: stage name {name!r} is used twice.")
        seen.add(name)
        command = entry["command"]
        if isinstance(command, str) or not isinstance(command, list) or not command:
            raise PipelineConfigError(f"{where}: 'command' must be a non-empty list of arguments.")
    return stages_raw


def _stage(
    entry: dict,
    name: str,
    point: dict[str, int],
    values: Placeholders,
    sweep: dict[str, tuple[int, ...]],
    where: str,
) -> StageSpec:
    """One (expanded) stage with every placeholder filled."""
    where = f"{where} ({name!r})"
    optional = {
        k: fill(str(entry[k]), values, where)
        for k in ("accelerate_config", "output_dir", "summary")
        if entry.get(k)
    }
    return StageSpec(
        name=fill(name, values, where) if "{" in name else expanded_name(name, point),
        command=expand_command(entry["command"], values, sweep, where),
        outputs=tuple(fill(str(o), values, where) for o in entry.get("outputs") or ()),
        resumable=bool(entry.get("resumable", False)),
        template=name,
        point=tuple(point.items()),
        **optional,
    )


def _matched_needs(
    needs: tuple[str, ...], point: dict[str, int], instances: dict[str, list[StageSpec]]
) -> tuple[str, ...]:
    """The expanded stages behind ``needs``: those agreeing with ``point`` on shared axes."""
    out: list[str] = []
    for need in needs:
        found = instances[need]
        points = [dict(stage.point) for stage in found]
        out += [found[i].name for i in matching_points(point, points)]
    return tuple(dict.fromkeys(out))


def _max_parallel(value: object, origin: str | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PipelineConfigError(
            f"{origin or 'pipeline'}: 'max_parallel' must be an integer >= 1 (how many stages may "
            f"run at once), got {value!r}."
        )
    return value


def _needs(
    entry: dict, name: str, earlier: set[str], all_names: set[str], where: str
) -> tuple[str, ...] | None:
    """Validate a stage's ``needs``: a list of names of stages defined earlier in the file."""
    if "needs" not in entry or entry["needs"] is None:
        return None
    needs = entry["needs"]
    if isinstance(needs, str) or not isinstance(needs, list):
        raise PipelineConfigError(
            f"{where} ({name!r}): 'needs' must be a list of stage names, got {needs!r}."
        )
    for need in needs:
        if str(need) == name:
            raise PipelineConfigError(f"{where} ({name!r}): a stage cannot need itself.")
        if str(need) not in earlier:
            problem = "comes later in the file" if str(need) in all_names else "is no stage"
            raise PipelineConfigError(
                f"{where} ({name!r}): needs {str(need)!r}, which {problem}; a stage may only "
                f"need stages above it: {sorted(earlier)}."
            )
    return tuple(dict.fromkeys(str(n) for n in needs))
