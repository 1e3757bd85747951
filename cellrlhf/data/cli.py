"""``cellrlhf data``: build training datasets, list and fetch registered data sets, check builds.

::

    cellrlhf data build --config configs/data/simulated.yaml [--out DIR] [--split KIND]
                        [--fold I] [--seed N] [--data-dir DIR] [--set section.key=value ...]
    cellrlhf data init my.h5ad [--out my_data.yaml]
    cellrlhf data list
    cellrlhf data fetch perturbench_devel [--data-dir DIR]
    cellrlhf data check outputs/data/simulated
    cellrlhf data simulate --out sim.h5ad --n-cells 5000 --n-genes 500 [--seed 0]

Each subcommand's options are a dataclass (:class:`BuildOptions`, ...; flags in either spelling,
``--data-dir`` or ``--data_dir``). ``build``'s ``--config`` is the nested data config
(``configs/data/*.yaml``, any key overridden with ``--set``), parsed by
:class:`~cellrlhf.cli_help.CellArgumentParser`; the other subcommands parse with
:class:`~cellrlhf.cli_help.CellTrlParser`, where ``--config`` is a YAML file of option values.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from cellrlhf.cli_help import RepeatableOption
from cellrlhf.data.init_config import InitOptions, run_init

__all__ = [
    "COMMANDS",
    "BuildOptions",
    "Command",
    "CheckOptions",
    "FetchOptions",
    "InitOptions",
    "ListOptions",
    "SimulateOptions",
    "build_overrides",
    "cli",
    "make_parser",
    "run_build",
    "run_check",
    "run_fetch",
    "run_list",
    "run_simulate",
]

logger = logging.getLogger(__name__)


@dataclass
class BuildOptions:
    """Options of ``cellrlhf data build`` (``--config`` is the data config, not option values)."""

    config: str = field(
        metadata={"metavar": "FILE.yaml", "help": "data config YAML (configs/data/*.yaml)"}
    )
    out: str | None = field(
        default=None, metadata={"help": "output directory (overrides output.dir)"}
    )
    split: str | None = field(
        default=None,
        metadata={
            "help": "split kind (overrides split.kind; it also turns off the settings the kind "
            "does not have: validation perturbations outside unseen_single / unseen_combo, pairs "
            "outside unseen_pair, folds for random_cells / unseen_context)"
        },
    )
    fold: int | None = field(
        default=None,
        metadata={
            "help": "build fold I (0-based) of a config with split.folds (overrides split.fold)"
        },
    )
    seed: int | None = field(default=None, metadata={"help": "build seed (overrides seed)"})
    data_dir: str | None = field(
        default=None, metadata={"help": "directory searched first for registered data sets"}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "download cache for registered data sets"}
    )
    overrides: list[str] = field(
        default_factory=list,
        metadata={
            "aliases": ["--set"],
            "action": RepeatableOption,
            "metavar": "KEY=VALUE",
            "help": "override any config key (repeat --set, or list several), e.g. "
            "--set sft.tasks.cell_annotation.max_examples=100",
        },
    )
    no_progress: bool = field(default=False, metadata={"help": "hide progress bars"})


@dataclass
class ListOptions:
    """``cellrlhf data list`` takes no options."""


@dataclass
class FetchOptions:
    """Options of ``cellrlhf data fetch``."""

    name: str = field(metadata={"positional": True, "help": "registered data set (data list)"})
    data_dir: str | None = field(
        default=None, metadata={"help": "directory searched first for the data set"}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "download cache"})


@dataclass
class CheckOptions:
    """Options of ``cellrlhf data check``."""

    path: str = field(metadata={"positional": True, "help": "built dataset directory"})


@dataclass
class SimulateOptions:
    """Options of ``cellrlhf data simulate`` (a SIMULATED screen, :mod:`cellrlhf.data.simulate`)."""

    out: str = field(metadata={"help": "the .h5ad file to write"})
    n_cells: int = field(default=2000, metadata={"help": "cells"})
    n_genes: int = field(default=200, metadata={"help": "genes"})
    n_perturbations: int = field(default=12, metadata={"help": "single perturbations"})
    n_combinations: int = field(default=4, metadata={"help": "two-target combinations"})
    n_contexts: int = field(default=2, metadata={"help": "cell contexts"})
    seed: int = field(default=0, metadata={"help": "random seed"})


def _split_kind_overrides(kind: str) -> list[str]:
    """``--split KIND``: the kind, and off for the settings that kind does not have."""
    from cellrlhf.data.split_config import FOLD_KINDS

    overrides = [f"split.kind={kind}"]
    if kind not in ("unseen_single", "unseen_combo"):
        overrides += ["split.n_validation_perturbations=0", "split.validation_perturbations=null"]
    if kind != "unseen_pair":
        overrides += [
            "split.n_validation_pairs=0",
            "split.validation_pairs=null",
            "split.test_pairs=null",
        ]
    else:
        overrides.append("split.test_perturbations=null")
    if kind not in FOLD_KINDS:
        overrides += ["split.folds=null", "split.fold=null"]
    return overrides


def _check_fold_flag(path, overrides: list[str], fold: int) -> None:
    """``--fold`` needs a config with ``split.folds``: say so plainly instead of a key error."""
    from cellrlhf.data.config import ConfigError, load_config

    config = load_config(path, overrides)
    if config.split.folds is None:
        raise ConfigError(
            f"--fold {fold} needs a config with split.folds (folds of held-out units); "
            f"{path} has none. Add split.folds: K to it (or --set split.folds=K), or drop --fold."
        )


def build_overrides(options: BuildOptions) -> list[str]:
    """The ``--set`` overrides of ``options`` followed by those its other flags imply."""
    overrides = list(options.overrides)
    if options.split:
        overrides += _split_kind_overrides(options.split)
    if options.fold is not None:
        _check_fold_flag(options.config, overrides, options.fold)
        overrides.append(f"split.fold={options.fold}")
    if options.seed is not None:
        overrides.append(f"seed={options.seed}")
    if options.no_progress:
        overrides.append("progress=false")
    return overrides


def run_build(options: BuildOptions) -> int:
    """``cellrlhf data build``: build the datasets and print a JSON summary."""
    from cellrlhf.data.build import build_datasets
    from cellrlhf.data.config import load_config

    config = load_config(options.config, build_overrides(options))
    result = build_datasets(
        config, out_dir=options.out, data_dir=options.data_dir, cache_dir=options.cache_dir
    )
    manifest = result.manifest
    summary = {
        "path": str(result.path),
        "fingerprint": manifest["fingerprint"],
        "simulated": manifest["simulated"],
        "split": manifest["split"]["kind"],
        "fold": manifest["split"].get("fold"),
        "folds": manifest["split"].get("folds"),
        "counts": manifest["counts"],
        "seconds": round(result.timings.get("total_s", 0.0), 2),
    }
    print(json.dumps(summary, indent=1))
    return 0


def run_list(_options: ListOptions) -> int:
    """``cellrlhf data list``: print the registered data sets."""
    from cellrlhf.data.registry import REGISTRY

    for entry in REGISTRY.values():
        where = entry.url or "data directory only (converted file)"
        print(f"{entry.name}\n  {entry.description}\n  licence: {entry.license}\n  from: {where}")
    return 0


def run_fetch(options: FetchOptions) -> int:
    """``cellrlhf data fetch``: find or download a registered data set; print its path."""
    from cellrlhf.data.registry import fetch

    print(fetch(options.name, data_dir=options.data_dir, cache_dir=options.cache_dir))
    return 0


def run_check(options: CheckOptions) -> int:
    """``cellrlhf data check``: re-check a built dataset for leakage; print the summary."""
    from cellrlhf.data.layout import open_dataset_dir
    from cellrlhf.data.leakage import check_no_leakage

    summary = check_no_leakage(open_dataset_dir(options.path))
    print(json.dumps({"leakage": "none found", **summary}, indent=1))
    return 0


def run_simulate(options: SimulateOptions) -> int:
    """``cellrlhf data simulate``: write a SIMULATED perturbation screen."""
    from cellrlhf.data.simulate import simulate_perturbation_data

    adata = simulate_perturbation_data(
        options.n_cells,
        options.n_genes,
        n_perturbations=options.n_perturbations,
        n_combinations=options.n_combinations,
        n_contexts=options.n_contexts,
        seed=options.seed,
    )
    adata.write_h5ad(options.out)
    print(f"wrote SIMULATED data {adata.n_obs} cells x {adata.n_vars} genes to {options.out}")
    return 0


class Command(NamedTuple):
    """A ``cellrlhf data`` subcommand: its options, what runs them, its help and usage."""

    options: type
    run: Callable[[object], int]
    help: str
    usage: str


COMMANDS: dict[str, Command] = {
    "build": Command(
        BuildOptions,
        run_build,
        "build pretrain / sft / rl datasets from a data config",
        "%(prog)s --config DATA.yaml [--out DIR] [--split KIND] [--fold I] [--seed N] "
        "[--set KEY=VALUE ...]",
    ),
    "init": Command(
        InitOptions,
        run_init,
        "inspect your own .h5ad and write a commented data config for it",
        "%(prog)s FILE.h5ad [--out my_data.yaml] [--name NAME] [--force]",
    ),
    "list": Command(ListOptions, run_list, "list the registered public data sets", "%(prog)s"),
    "fetch": Command(
        FetchOptions,
        run_fetch,
        "find or download a registered data set and verify it",
        "%(prog)s NAME [--data-dir DIR] [--cache-dir DIR]",
    ),
    "check": Command(
        CheckOptions, run_check, "re-check a built dataset directory for leakage", "%(prog)s DIR"
    ),
    "simulate": Command(
        SimulateOptions,
        run_simulate,
        "write a SIMULATED perturbation screen (.h5ad)",
        "%(prog)s --out FILE.h5ad [--n-cells N] [--n-genes N] [--seed N] [--config FILE.yaml]",
    ),
}


def make_parser(command: str):
    """The parser of ``cellrlhf data <command>``: a
    :class:`~cellrlhf.cli_help.CellArgumentParser` for ``build`` (its ``--config`` is the data
    config), a :class:`~cellrlhf.cli_help.CellTrlParser` for the others."""
    from cellrlhf.cli_help import CellArgumentParser, CellTrlParser

    spec = COMMANDS[command]
    parser_type = CellArgumentParser if command == "build" else CellTrlParser
    return parser_type(
        (spec.options,), prog=f"cellrlhf data {command}", usage=spec.usage, description=spec.help
    )


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: cellrlhf data <command> [options]   (cellrlhf data <command> --help)", ""]
    lines += [f"  {name.ljust(width)}  {spec.help}" for name, spec in COMMANDS.items()]
    return "\n".join(lines)


def cli(argv: Sequence[str]) -> int:
    """Run ``cellrlhf data <command>``; returns the exit status."""
    from cellrlhf.data.build import BuildError
    from cellrlhf.data.config import ConfigError
    from cellrlhf.data.layout import DatasetDirError
    from cellrlhf.data.registry import ChecksumError, DatasetNotFoundError
    from cellrlhf.data.schema import SchemaError
    from cellrlhf.data.splits import LeakageError, SplitError

    argv = list(argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(
            f"cellrlhf data: error: unknown command {argv[0]!r} "
            f"(choose from {', '.join(COMMANDS)})",
            file=sys.stderr,
        )
        return 2
    (options,) = make_parser(argv[0]).parse_args_and_config(argv[1:])
    try:
        return COMMANDS[argv[0]].run(options)
    except (
        BuildError,
        ConfigError,
        DatasetDirError,
        SchemaError,
        SplitError,
        ChecksumError,
        DatasetNotFoundError,
        LeakageError,
        FileNotFoundError,
        KeyError,
    ) as err:
        print(f"cellrlhf data: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(cli(sys.argv[1:]))
