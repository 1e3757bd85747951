"""``cellrlhf data``: build training datasets, list and fetch registered data sets, check builds.

::

    cellrlhf data build --config configs/data/simulated.yaml [--out DIR] [--split KIND]
                        [--fold I] [--seed N] [--data-dir DIR] [--set section.key=value ...]
    cellrlhf data init my.h5ad [--out my_data.yaml]
    cellrlhf data list
    cellrlhf data fetch perturbench_devel [--data-dir DIR]
    cellrlhf data check outputs/data/simulated
    cellrlhf data simulate --out sim.h5ad --n-cells 5000 --n-genes 500 [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

__all__ = ["cli", "build_parser"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellrlhf data", description="Turn AnnData into training-ready datasets."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="build pretrain / sft / rl datasets from a data config")
    build.add_argument("--config", required=True, help="data config YAML (configs/data/*.yaml)")
    build.add_argument("--out", help="output directory (overrides output.dir)")
    build.add_argument(
        "--split",
        help="split kind (overrides split.kind; it also turns off the settings the kind does not "
        "have: validation perturbations outside unseen_single / unseen_combo, pairs outside "
        "unseen_pair, folds for random_cells / unseen_context)",
    )
    build.add_argument(
        "--fold",
        type=int,
        help="build fold I (0-based) of a config with split.folds (overrides split.fold)",
    )
    build.add_argument("--seed", type=int, help="build seed (overrides seed)")
    build.add_argument("--data-dir", help="directory searched first for registered data sets")
    build.add_argument("--cache-dir", help="download cache for registered data sets")
    build.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set sft.tasks.cell_annotation.max_examples=100",
    )
    build.add_argument("--no-progress", action="store_true", help="hide progress bars")

    from cellrlhf.data.init_config import add_init_parser

    add_init_parser(sub)
    sub.add_parser("list", help="list the registered public data sets")

    fetch = sub.add_parser("fetch", help="find or download a registered data set and verify it")
    fetch.add_argument("name")
    fetch.add_argument("--data-dir")
    fetch.add_argument("--cache-dir")

    check = sub.add_parser("check", help="re-check a built dataset directory for leakage")
    check.add_argument("path")

    simulate = sub.add_parser("simulate", help="write a SIMULATED perturbation screen (.h5ad)")
    simulate.add_argument("--out", required=True)
    simulate.add_argument("--n-cells", type=int, default=2000)
    simulate.add_argument("--n-genes", type=int, default=200)
    simulate.add_argument("--n-perturbations", type=int, default=12)
    simulate.add_argument("--n-combinations", type=int, default=4)
    simulate.add_argument("--n-contexts", type=int, default=2)
    simulate.add_argument("--seed", type=int, default=0)
    return parser


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


def _build(args) -> int:
    from cellrlhf.data.build import build_datasets
    from cellrlhf.data.config import load_config

    overrides = list(args.overrides)
    if args.split:
        overrides += _split_kind_overrides(args.split)
    if args.fold is not None:
        _check_fold_flag(args.config, overrides, args.fold)
        overrides.append(f"split.fold={args.fold}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.no_progress:
        overrides.append("progress=false")
    config = load_config(args.config, overrides)
    result = build_datasets(
        config, out_dir=args.out, data_dir=args.data_dir, cache_dir=args.cache_dir
    )
    manifest = result.manifest
    print(
        json.dumps(
            {
                "path": str(result.path),
                "fingerprint": manifest["fingerprint"],
                "simulated": manifest["simulated"],
                "split": manifest["split"]["kind"],
                "fold": manifest["split"].get("fold"),
                "folds": manifest["split"].get("folds"),
                "counts": manifest["counts"],
                "seconds": round(result.timings.get("total_s", 0.0), 2),
            },
            indent=1,
        )
    )
    return 0


def cli(argv: list[str]) -> int:
    """Run ``cellrlhf data <command>``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from cellrlhf.data.build import BuildError
    from cellrlhf.data.config import ConfigError
    from cellrlhf.data.registry import ChecksumError, DatasetNotFoundError
    from cellrlhf.data.schema import SchemaError
    from cellrlhf.data.splits import LeakageError, SplitError

    try:
        if args.command == "build":
            return _build(args)
        if args.command == "init":
            from cellrlhf.data.init_config import run_init

            return run_init(args)
        if args.command == "list":
            from cellrlhf.data.registry import REGISTRY

            for entry in REGISTRY.values():
                where = entry.url or "data directory only (converted file)"
                print(
                    f"{entry.name}\n  {entry.description}\n  licence: {entry.license}\n  from: {where}"
                )
            return 0
        if args.command == "fetch":
            from cellrlhf.data.registry import fetch

            print(fetch(args.name, data_dir=args.data_dir, cache_dir=args.cache_dir))
            return 0
        if args.command == "check":
            from cellrlhf.data.layout import load_built_dataset
            from cellrlhf.data.leakage import check_no_leakage

            summary = check_no_leakage(load_built_dataset(args.path))
            print(json.dumps({"leakage": "none found", **summary}, indent=1))
            return 0
        if args.command == "simulate":
            from cellrlhf.data.simulate import simulate_perturbation_data

            adata = simulate_perturbation_data(
                args.n_cells,
                args.n_genes,
                n_perturbations=args.n_perturbations,
                n_combinations=args.n_combinations,
                n_contexts=args.n_contexts,
                seed=args.seed,
            )
            adata.write_h5ad(args.out)
            print(f"wrote SIMULATED data {adata.n_obs} cells x {adata.n_vars} genes to {args.out}")
            return 0
    except (
        BuildError,
        ConfigError,
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
    return 2


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(cli(sys.argv[1:]))
