"""``--help`` of the training stages: ``--config`` and cellrlhf's own options first.

The stages parse their dataclasses with TRL's :class:`~trl.TrlParser`, whose help lists the
~900 inherited options of ``transformers.TrainingArguments`` and TRL's configs and never
mentions ``--config`` (TRL reads it before argparse). :class:`CellTrlParser` is the same parser
with a help that leads with ``--config`` and the options cellrlhf's dataclasses declare, then
lists the inherited ones.
"""

from __future__ import annotations

import argparse
import dataclasses

from trl import TrlParser

__all__ = ["CellTrlParser", "own_fields"]

CONFIG_HELP = (
    "YAML file of option values (configs/<stage>/*.yaml); flags given after it override it"
)


def own_fields(dataclass_type) -> set[str]:
    """Fields declared by cellrlhf's classes of ``dataclass_type`` and by no base class from
    another package (an inherited option whose default cellrlhf changes stays inherited)."""
    ours, theirs = set(), set()
    for cls in dataclass_type.__mro__:
        names = set(getattr(cls, "__annotations__", {}))
        (ours if cls.__module__.split(".")[0] == "cellrlhf" else theirs).update(names)
    declared = {f.name for f in dataclasses.fields(dataclass_type)}
    return (ours - theirs) & declared


class CellTrlParser(TrlParser):
    """:class:`~trl.TrlParser` whose help leads with ``--config`` and cellrlhf's options."""

    def __init__(self, dataclass_types=None, **kwargs):
        kwargs.setdefault("usage", "%(prog)s [--config FILE.yaml] [--OPTION VALUE ...]")
        super().__init__(dataclass_types, **kwargs)
        types = dataclass_types if isinstance(dataclass_types, (list, tuple)) else []
        self._own = set().union(*(own_fields(t) for t in types)) if types else set()

    def format_help(self) -> str:
        formatter = self._get_formatter()
        formatter.add_usage(self.usage, self._actions, self._mutually_exclusive_groups)
        formatter.add_text(self.description)
        actions = [a for a in self._actions if a.dest != "help"]
        own = [a for a in actions if a.dest in self._own]
        inherited = [a for a in actions if a.dest not in self._own]
        # shown, not parsed: TrlParser reads --config before argparse sees the arguments
        config = argparse.Action(
            ["--config"],
            dest="config",
            metavar="FILE.yaml",
            default=argparse.SUPPRESS,
            help=CONFIG_HELP,
        )
        formatter.start_section("start here")
        formatter.add_arguments([config, *(a for a in self._actions if a.dest == "help")])
        formatter.end_section()
        formatter.start_section(f"cellrlhf options ({len(own)})")
        formatter.add_arguments(own)
        formatter.end_section()
        formatter.start_section(
            f"inherited options ({len(inherited)}: transformers TrainingArguments, TRL configs)"
        )
        formatter.add_arguments(inherited)
        formatter.end_section()
        formatter.add_text(self.epilog)
        return formatter.format_help()
