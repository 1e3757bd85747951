"""One parser for every ``cellrlhf`` command: dataclasses, ``--config file.yaml`` and flags.

The commands parse their dataclasses with :class:`CellTrlParser`, TRL's :class:`~trl.TrlParser`
(``--config`` gives option values, flags given with it override them) with three changes:

- its help leads with ``--config`` and the options cellrlhf's dataclasses declare, then lists
  the ~900 inherited ones of ``transformers.TrainingArguments`` and TRL's configs (TRL's own help
  never mentions ``--config``, which it reads before argparse);
- an unknown key in the YAML file, an unknown flag or a missing ``--config`` file is one usage
  error naming it and the fix (the known keys, or the closest ones), not a ``ValueError``;
- ``--config=FILE`` works like ``--config FILE``.

A command whose ``--config`` is its own input file (``cellrlhf data build --config
configs/data/<name>.yaml``: the nested data config, not a file of option values) declares a
``config`` field and parses with :class:`CellArgumentParser`: the same dataclasses, help and
errors, without TRL's option-values file.

Options that a field's ``metadata={"action": ...}`` gives their own command-line form:
:class:`RepeatableOption` (``--model a=x --model b=y``) and :class:`NegatableFlag`
(``--constrain-cells`` / ``--no-constrain-cells`` for a ``bool | None``). :func:`options_dataclass`
mirrors a frozen settings dataclass (tuples and all) as one the parser reads. A field with
``metadata={"positional": True}`` is a positional argument (``cellrlhf data check DIR``), optional
when the field has a default; a ``--config`` file may still give it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import re
import sys
import typing
from pathlib import Path

from transformers import HfArgumentParser
from trl import TrlParser

__all__ = [
    "CellArgumentParser",
    "CellTrlParser",
    "NegatableFlag",
    "RepeatableOption",
    "attribute_help",
    "options_dataclass",
    "own_fields",
]

CONFIG_HELP = (
    "YAML file of option values (configs/<stage>/*.yaml); flags given after it override it"
)
_LISTED_KEYS = 60  # a config with more known keys names the closest ones instead of all


def own_fields(dataclass_type) -> set[str]:
    """Fields declared by cellrlhf's classes of ``dataclass_type`` and by no base class from
    another package (an inherited option whose default cellrlhf changes stays inherited)."""
    ours, theirs = set(), set()
    for cls in dataclass_type.__mro__:
        names = set(getattr(cls, "__annotations__", {}))
        (ours if cls.__module__.split(".")[0] == "cellrlhf" else theirs).update(names)
    declared = {f.name for f in dataclasses.fields(dataclass_type)}
    return (ours - theirs) & declared


class RepeatableOption(argparse.Action):
    """A list option given as ``--x a --x b`` or ``--x a b``.

    The values on the command line replace the default (the ``--config`` file's list); a
    repeated flag adds to them. Use as a list field's ``metadata={"action": RepeatableOption}``.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        if current is None or current is self.default:
            current = []
        setattr(namespace, self.dest, [*current, *values])


class NegatableFlag(argparse.Action):
    """A ``bool | None`` option: ``--x`` or ``--x true`` sets it, ``--no-x`` / ``--no_x`` or
    ``--x false`` clears it, and leaving it out keeps ``None`` (decide case by case).

    Use as the field's ``metadata={"action": NegatableFlag}``.
    """

    def __init__(self, option_strings, dest, nargs=None, const=None, **kwargs):
        names = [opt[2:] for opt in option_strings if opt.startswith("--")]
        negative = [f"--no_{n}" for n in names if "-" not in n]
        negative += [f"--no-{n.replace('_', '-')}" for n in names]
        self.negative = list(dict.fromkeys(negative))
        super().__init__([*option_strings, *self.negative], dest, nargs="?", const=True, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, False if option_string in self.negative else values)


def attribute_help(cls) -> dict[str, str]:
    """The one-paragraph descriptions of a numpy-style ``Attributes`` section, by name.

    ``name_a, name_b`` followed by an indented paragraph gives both names that paragraph;
    reST markup (````x````, ``:func:`~m.x```) is dropped for the terminal.
    """
    lines = (inspect.getdoc(cls) or "").splitlines()
    start = next((i + 2 for i, line in enumerate(lines) if line.strip() == "Attributes"), None)
    helps: dict[str, str] = {}
    names: list[str] = []
    body = lines[start or len(lines) :]
    for line, following in zip(body, [*body[1:], ""], strict=True):
        if following.startswith("---"):  # the next section's title
            break
        if line and not line.startswith(" "):
            names = [n.strip() for n in line.split(",")]
            helps.update(dict.fromkeys(names, ""))
        elif line.strip():
            for name in names:
                helps[name] = f"{helps[name]} {line.strip()}".strip()
    return {name: _plain(text) for name, text in helps.items()}


def _plain(text: str) -> str:
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "")


def options_dataclass(settings_type, *, name: str, metadata: dict[str, dict] | None = None):
    """A parser dataclass with the fields and defaults of the dataclass ``settings_type``.

    Tuples become lists (``tuple[str, ...]`` -> ``list[str]``, which the parser reads as
    ``--x a b``), each field's help is its paragraph in the class's ``Attributes`` docstring,
    and ``metadata`` adds argparse keywords per field (``{"x": {"action": NegatableFlag}}``).
    Build the instance the command uses with ``settings_type(**dataclasses.asdict(options))``.
    """
    hints = typing.get_type_hints(settings_type)
    helps = attribute_help(settings_type)
    metadata = metadata or {}
    specs = []
    for f in dataclasses.fields(settings_type):
        type_, default = hints[f.name], f.default
        if typing.get_origin(type_) is tuple:
            type_ = list[typing.get_args(type_)[0]]
        extra = {"help": helps.get(f.name, ""), **metadata.get(f.name, {})}
        if isinstance(default, (list, tuple)):
            field = dataclasses.field(default_factory=lambda d=default: list(d), metadata=extra)
        else:
            field = dataclasses.field(default=default, metadata=extra)
        specs.append((f.name, type_, field))
    doc = f"Options of :class:`{settings_type.__module__}.{settings_type.__qualname__}`."
    namespace = {"__module__": settings_type.__module__, "__doc__": doc}
    return dataclasses.make_dataclass(name, specs, namespace=namespace)


class _CellParsing:
    """What both parsers share: positional fields, unknown flags refused, grouped help."""

    _own: set[str]

    def _own_options(self, dataclass_types) -> None:
        types = dataclass_types if isinstance(dataclass_types, (list, tuple)) else []
        self._own = set().union(*(own_fields(t) for t in types)) if types else set()

    @staticmethod
    def _parse_dataclass_field(parser, field: dataclasses.Field) -> None:
        if not field.metadata.get("positional"):
            HfArgumentParser._parse_dataclass_field(parser, field)
            return
        kwargs = {k: v for k, v in field.metadata.items() if k != "positional"}
        if field.default is not dataclasses.MISSING:
            kwargs.update(nargs="?", default=field.default)
        kwargs.setdefault("metavar", field.name.upper())
        parser.add_argument(field.name, **kwargs)

    def _refuse_unknown(self, remaining: list[str]) -> None:
        if remaining:
            self.error(
                f"unrecognized arguments: {' '.join(remaining)} "
                f"(`{self.prog} --help` lists the options)"
            )

    def _config_action(self) -> argparse.Action | None:
        """The ``--config`` shown first in the help (``None``: the command has none)."""
        return None

    def format_help(self) -> str:
        formatter = self._get_formatter()
        formatter.add_usage(self.usage, self._actions, self._mutually_exclusive_groups)
        formatter.add_text(self.description)
        config = self._config_action()
        actions = [a for a in self._actions if a.dest != "help" and a is not config]
        own = [a for a in actions if a.dest in self._own or not a.option_strings]
        inherited = [a for a in actions if a not in own]
        formatter.start_section("start here")
        start = [config] if config is not None else []
        formatter.add_arguments([*start, *(a for a in self._actions if a.dest == "help")])
        formatter.end_section()
        formatter.start_section(f"cellrlhf options ({len(own)})" if inherited else "options")
        formatter.add_arguments(own)
        formatter.end_section()
        if inherited:
            formatter.start_section(
                f"inherited options ({len(inherited)}: transformers TrainingArguments, TRL configs)"
            )
            formatter.add_arguments(inherited)
            formatter.end_section()
        formatter.add_text(self.epilog)
        return formatter.format_help()


class CellTrlParser(_CellParsing, TrlParser):
    """:class:`~trl.TrlParser` whose help leads with ``--config`` and cellrlhf's options, and
    whose unknown keys and flags are usage errors that say what is known."""

    def __init__(self, dataclass_types=None, **kwargs):
        kwargs.setdefault("usage", "%(prog)s [--config FILE.yaml] [--OPTION VALUE ...]")
        super().__init__(dataclass_types, **kwargs)
        self._own_options(dataclass_types)
        self._config_path: str | None = None

    def parse_args_and_config(self, args=None, return_remaining_strings=False, **kwargs):
        """TrlParser's parse, with ``--config=FILE``, and unknown keys and flags refused."""
        args = list(sys.argv[1:] if args is None else args)
        args = [p for a in args for p in (a.split("=", 1) if a.startswith("--config=") else [a])]
        if "--config" in args:
            at = args.index("--config")
            if at + 1 >= len(args):
                self.error("--config needs a YAML file: --config FILE.yaml")
            self._config_path = args[at + 1]
            if not Path(self._config_path).is_file():
                self.error(f"--config {self._config_path}: no such file")
        output = super().parse_args_and_config(args, return_remaining_strings=True, **kwargs)
        if return_remaining_strings:
            return output
        self._refuse_unknown(output[-1])
        return output[:-1]

    def set_defaults_with_config(self, **kwargs) -> list[str]:
        known = sorted({a.dest for a in self._actions if a.dest != "help"})
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            if len(known) <= _LISTED_KEYS:
                hint = f"known keys: {', '.join(known)}"
            else:
                close = sorted({m for k in unknown for m in difflib.get_close_matches(k, known)})
                hint = f"did you mean {', '.join(close)}? " if close else ""
                hint += f"`{self.prog} --help` lists every option"
            self.error(
                f"{self._config_path or 'the --config file'}: unknown key(s) "
                f"{', '.join(unknown)}; remove or rename them ({hint})"
            )
        return super().set_defaults_with_config(**kwargs)

    def _config_action(self) -> argparse.Action:
        # shown, not parsed: TrlParser reads --config before argparse sees the arguments
        return argparse.Action(
            ["--config"],
            dest="config",
            metavar="FILE.yaml",
            default=argparse.SUPPRESS,
            help=CONFIG_HELP,
        )


class CellArgumentParser(_CellParsing, HfArgumentParser):
    """The parser of a command whose ``--config`` is its own input file, not option values.

    :class:`~transformers.HfArgumentParser` with :class:`CellTrlParser`'s help, positional
    fields and errors; the command's dataclass declares the ``config`` field itself (``cellrlhf
    data build``: the nested data config YAML, with ``--set key=value`` overrides), so no YAML
    of option values is read. :meth:`parse_args_and_config` is named like
    :meth:`CellTrlParser.parse_args_and_config` so that every command parses alike.
    """

    def __init__(self, dataclass_types=None, **kwargs):
        kwargs.setdefault("usage", "%(prog)s --config FILE.yaml [--OPTION VALUE ...]")
        super().__init__(dataclass_types, **kwargs)
        self._own_options(dataclass_types)

    def parse_args_and_config(self, args=None, return_remaining_strings=False):
        """The dataclasses of ``args`` (default ``sys.argv[1:]``); an unknown flag is a usage
        error naming it (``return_remaining_strings``: returned last instead)."""
        args = list(sys.argv[1:] if args is None else args)
        output = self.parse_args_into_dataclasses(args, return_remaining_strings=True)
        if return_remaining_strings:
            return output
        self._refuse_unknown(output[-1])
        return output[:-1]

    def _config_action(self) -> argparse.Action | None:
        return next((a for a in self._actions if a.dest == "config"), None)
