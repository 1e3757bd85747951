"""Sweeps in pipeline files: one stage written once, run once per fold, per seed, or per both.

A pipeline file may carry a top-level ``sweep:`` section::

    sweep:
      folds: 5            # K -> folds 0..K-1 (or a list of fold numbers: [0, 2])
      seeds: [0, 1, 2]    # a list of seeds

and mark stages with ``per:``:

- ``per: fold`` runs the stage once per fold (named ``<name>_f<fold>``);
- ``per: seed`` once per seed (``<name>_s<seed>``);
- ``per: [fold, seed]`` once per fold and seed (``<name>_f<fold>_s<seed>``);
- no ``per`` runs it once, under its own name.

In a swept stage every string (command, outputs, output_dir, summary, accelerate_config,
needs) has ``{fold}`` and ``{seed}`` filled with the stage's values; a name with a placeholder
(``name: "sft_fold{fold}_seed{seed}"``) is used as written instead of the suffix. ``needs``
name stages as written in the file; a need is rewritten to the expanded stages that agree with
this stage on the axes both share: a per-[fold, seed] stage needing a per-fold stage waits for
that fold's one, a once stage needing a per-fold stage waits for all of them, a per-fold stage
needing a per-[fold, seed] stage waits for every seed of its fold. A swept stage without
``needs`` waits for every earlier stage written in the file, by the same rule (its own fold's
and seed's, not the whole sweep's).

A command may hold a *foreach* item, a mapping that stands for its ``args`` repeated for every
value of the axes it names (fold-major), e.g. the aggregate stage's::

    command: [aggregate,
              {foreach: [fold, seed], args: [--eval, "fold{fold}_seed{seed}={run_dir}/f{fold}_s{seed}/eval"]},
              --out, "{run_dir}/aggregate"]

which becomes ``--eval fold0_seed0=... --eval fold0_seed1=... ...``.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Iterator, Mapping, Sequence

__all__ = [
    "AXES",
    "SweepError",
    "parse_sweep",
    "parse_per",
    "sweep_points",
    "expanded_name",
    "matching_points",
    "Placeholders",
    "fill",
    "expand_command",
]

# sweep-section key -> placeholder / per value, in the order expanded names carry them
AXES = {"folds": "fold", "seeds": "seed"}
_SUFFIX = {"fold": "f", "seed": "s"}


class SweepError(ValueError):
    """A sweep, ``per`` or placeholder that cannot be expanded as written."""


class _CircularVariables(SweepError):
    """Variables that refer to each other in a circle (reported once, unwrapped)."""


def _int_list(key: str, value: object, origin: str) -> tuple[int, ...]:
    if key == "folds" and isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise SweepError(
                f"{origin}: sweep.folds must be >= 1 (the number of folds), got {value}."
            )
        return tuple(range(value))
    if (
        not isinstance(value, list)
        or not value
        or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
    ):
        form = "a number of folds K or a list of fold numbers" if key == "folds" else "a list"
        raise SweepError(
            f"{origin}: sweep.{key} must be {form} of integers (e.g. {key}: [0, 1, 2]), got "
            f"{value!r}."
        )
    if len(set(value)) != len(value):
        raise SweepError(f"{origin}: sweep.{key} lists a value twice: {value}.")
    return tuple(value)


def parse_sweep(raw: object, origin: str) -> dict[str, tuple[int, ...]]:
    """``{folds: 2, seeds: [0, 1]}`` -> ``{"fold": (0, 1), "seed": (0, 1)}`` (``{}``: no sweep)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise SweepError(
            f"{origin}: 'sweep' must be a mapping like {{folds: 5, seeds: [0, 1, 2]}}, got {raw!r}."
        )
    unknown = set(raw) - set(AXES)
    if unknown:
        raise SweepError(f"{origin}: unknown sweep keys {sorted(unknown)}; allowed {sorted(AXES)}.")
    return {axis: _int_list(key, raw[key], origin) for key, axis in AXES.items() if key in raw}


def _axes(
    value: object, sweep: Mapping[str, Sequence[int]], where: str, key: str
) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    known = list(AXES.values())
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise SweepError(f"{where}: '{key}' must be fold, seed or [fold, seed], got {value!r}.")
    for item in items:
        if item not in known:
            raise SweepError(
                f"{where}: '{key}: {item}' is not a sweep axis; use fold, seed or [fold, seed]."
            )
        if item not in sweep:
            raise SweepError(
                f"{where}: '{key}: {item}' needs a top-level sweep with {item}s "
                f"(sweep: {{{item}s: ...}}); this file sweeps {sorted(sweep) or 'nothing'}."
            )
    if len(set(items)) != len(items):
        raise SweepError(f"{where}: '{key}' names an axis twice: {value!r}.")
    return tuple(axis for axis in known if axis in items)


def parse_per(entry: Mapping, sweep: Mapping[str, Sequence[int]], where: str) -> tuple[str, ...]:
    """The axes a stage runs over (``()``: once), in canonical order (fold, then seed)."""
    if entry.get("per") is None:
        return ()
    return _axes(entry["per"], sweep, where, "per")


def sweep_points(axes: Sequence[str], sweep: Mapping[str, Sequence[int]]) -> list[dict[str, int]]:
    """Every combination of the axes' values, fold-major (``[{}]`` when ``axes`` is empty)."""
    return [
        dict(zip(axes, values, strict=True))
        for values in itertools.product(*(sweep[a] for a in axes))
    ]


def expanded_name(name: str, point: Mapping[str, int]) -> str:
    """``sft``, ``{fold: 1, seed: 2}`` -> ``sft_f1_s2``."""
    return name + "".join(
        f"_{_SUFFIX[axis]}{point[axis]}" for axis in AXES.values() if axis in point
    )


def matching_points(point: Mapping[str, int], candidates: Sequence[Mapping[str, int]]) -> list[int]:
    """Indices of ``candidates`` that agree with ``point`` on every axis both have."""
    return [
        i
        for i, other in enumerate(candidates)
        if all(point[axis] == value for axis, value in other.items() if axis in point)
    ]


class Placeholders(Mapping):
    """Values for ``{name}`` placeholders of one stage (instance): its sweep point, then the
    pipeline's variables, each resolved on first use (variables may use each other, ``run_dir``
    and the sweep axes).

    Parameters
    ----------
    variables
        Variable name -> template.
    point
        The stage's sweep values (``{"fold": 1}``); a value may be a string, e.g. ``"{fold}"``
        to leave the placeholder in place.
    unbound
        Sweep axes the stage does not run over: using them is an error naming the fix.
    """

    def __init__(
        self, variables: Mapping[str, str], point: Mapping[str, object], unbound: Sequence[str]
    ) -> None:
        self.variables, self.point, self.unbound = dict(variables), dict(point), tuple(unbound)
        self._resolved: dict[str, str] = {}
        self._resolving: list[str] = []

    def __getitem__(self, key: str) -> object:
        if key in self.point:
            return self.point[key]
        if key in self.unbound:
            raise SweepError(
                f"uses {{{key}}} but does not run per {key}; add 'per: {key}' (or "
                f"'per: [fold, seed]') to the stage, or use {{{key}}} only inside a foreach item."
            )
        if key in AXES.values():
            raise SweepError(
                f"uses {{{key}}}, which is defined only in a sweep: add a top-level "
                f"'sweep: {{{key}s: ...}}' and 'per: {key}' on the stage."
            )
        if key not in self.variables:
            raise KeyError(key)
        if key not in self._resolved:
            if key in self._resolving:
                cycle = " -> ".join([*self._resolving[self._resolving.index(key) :], key])
                raise _CircularVariables(f"variables refer to each other in a circle: {cycle}.")
            self._resolving.append(key)
            try:
                self._resolved[key] = fill(self.variables[key], self, f"variables.{key}")
            finally:
                self._resolving.pop()
        return self._resolved[key]

    def __iter__(self) -> Iterator[str]:
        return iter({**self.variables, **self.point})

    def __len__(self) -> int:
        return len({**self.variables, **self.point})


def fill(value: str, values: Mapping[str, object], where: str) -> str:
    """``value`` with its ``{name}`` placeholders filled from ``values``.

    Raises
    ------
    SweepError
        A placeholder is undefined or a sweep axis the stage does not run over.
    """
    try:
        return string.Formatter().vformat(value, (), values)
    except KeyError as err:
        raise SweepError(
            f"{where}: placeholder {{{err.args[0]}}} is not defined; define it under 'variables:' "
            f"or pass --set {err.args[0]}=VALUE. Defined: {sorted(values)}."
        ) from None
    except _CircularVariables:
        raise
    except SweepError as err:
        raise SweepError(f"{where}: {err}") from None


def expand_command(
    command: Sequence[object],
    values: Placeholders,
    sweep: Mapping[str, Sequence[int]],
    where: str,
) -> tuple[str, ...]:
    """The arguments of a command with placeholders filled and foreach items expanded."""
    out: list[str] = []
    for arg in command:
        if not isinstance(arg, dict):
            out.append(fill(str(arg), values, where))
            continue
        if set(arg) != {"foreach", "args"} or not isinstance(arg["args"], list):
            raise SweepError(
                f"{where}: a mapping in 'command' must be {{foreach: [fold, seed], args: [...]}} "
                f"(args repeated for every fold and seed), got {arg!r}."
            )
        if not sweep:
            raise SweepError(f"{where}: 'foreach' needs a top-level 'sweep:' section.")
        axes = _axes(arg["foreach"], sweep, where, "foreach")
        bound = [axis for axis in axes if axis in values.point]
        if bound:
            raise SweepError(
                f"{where}: foreach over {bound}, which the stage itself runs per; drop them "
                "from foreach or from per."
            )
        for point in sweep_points(axes, sweep):
            inner = Placeholders(
                values.variables,
                {**values.point, **point},
                [a for a in values.unbound if a not in point],
            )
            out.extend(fill(str(a), inner, where) for a in arg["args"])
    return tuple(out)
