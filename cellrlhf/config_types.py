"""Check the values of a config section against the types its dataclass declares.

YAML makes it easy to write ``test_fraction: "0.2"`` (a string) or ``chunk_size: 1e3`` (also a
string: YAML reads ``1e3`` without a dot as text). Without a check the value travels on until a
comparison fails with ``'<' not supported between instances of 'str' and 'int'``, far from the
key that caused it. :func:`check_types` names the key, the expected type and the value instead.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping

__all__ = ["check_types", "type_problem"]


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin in (list, tuple, set, frozenset) or origin is typing.get_origin(typing.Sequence):
        return "a list"
    if origin in (dict, Mapping) or origin is typing.get_origin(typing.Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _matches(value, hint) -> bool:
    if hint is typing.Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is not None:
        container = origin if isinstance(origin, type) else None
        if container is not None and issubclass(container, Mapping):
            return isinstance(value, Mapping)
        if (
            container is not None
            and container is not str
            and issubclass(container, typing.Iterable)
        ):
            return isinstance(value, (list, tuple, set, frozenset))
        return True
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (Mapping, hint))
    return True  # types this check does not know are left to the config class


def type_problem(value, hint, key: str) -> str | None:
    """Why ``value`` does not fit ``hint`` (a message naming ``key``), or ``None`` when it does."""
    if _matches(value, hint):
        return None
    quoted = ""
    if isinstance(value, str):
        try:
            float(value)
            quoted = " (a number written in quotes, or like 1e-5 without a dot, is read as text)"
        except ValueError:
            pass
    return f"{key} must be {_describe(hint)}, got {value!r} ({type(value).__name__}){quoted}."


def check_types(cls, spec, section: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` when a value of ``spec`` does not have the type ``cls`` declares for it.

    Parameters
    ----------
    cls
        A dataclass.
    spec
        The section's mapping as read from YAML (anything else is left to other checks).
    section
        The section's name, for the message (``"split"`` gives ``split.test_fraction``).
    error
        The exception class raised.
    """
    if not isinstance(spec, Mapping):
        return
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in spec.items():
        if key not in names or key not in hints:
            continue
        problem = type_problem(value, hints[key], f"{section}.{key}" if section else str(key))
        if problem is not None:
            raise error(problem)
