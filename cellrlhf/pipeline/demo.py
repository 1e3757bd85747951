"""``cellrlhf demo``: the whole pipeline on CPU with a default that needs no extra files.

The default data is the real Norman 2019 / McFaline-Figueroa 2023 perturbench subset, found in
the data directory (``--data-dir`` or ``$CELLRLHF_DATA_DIR``), the download cache, or downloaded
once from its pinned upstream commit with its sha256 checked. When it cannot be had, the demo says
so plainly and runs on the simulator, whose datasets and report are labelled *simulated*.
"""

from __future__ import annotations

import argparse
import logging
import os
from importlib import resources
from pathlib import Path

from cellrlhf.pipeline.run import add_jobs_argument, print_verdict

__all__ = ["choose_data_config", "make_parser", "cli", "DEMO_PIPELINE"]

logger = logging.getLogger(__name__)

DEMO_PIPELINE = "configs/pipeline/demo.yaml"
# the real subset with the average training response as evidence in every perturbation prompt
REAL_DATA_CONFIG = "configs/data/norman_mcfaline_evidence.yaml"
SIMULATED_DATA_CONFIG = "configs/data/simulated.yaml"


def choose_data_config(*, data_dir: str | None, offline: bool) -> tuple[str, bool]:
    """The data config to use and whether it is simulated.

    Looks for the real perturbench subset (data directory, cache, then a verified download unless
    ``offline``); falls back to the simulator with a clear warning.
    """
    from cellrlhf.data.registry import ChecksumError, DatasetNotFoundError, fetch

    try:
        path = fetch("perturbench_devel", data_dir=data_dir, download=not offline)
    except (DatasetNotFoundError, ChecksumError) as err:
        logger.warning(
            "The real Norman/McFaline data set is not available (%s). Running on SIMULATED data "
            "instead: every number of this demo describes the simulator, not biology. Put "
            "perturbench_devel.h5ad in a data directory (--data-dir or $CELLRLHF_DATA_DIR) to "
            "run on real data.",
            err,
        )
        return SIMULATED_DATA_CONFIG, True
    logger.info("Real data: %s (sha256 verified)", path)
    return REAL_DATA_CONFIG, False


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellrlhf demo",
        description="Run encode -> datasets -> pretrain -> SFT -> preferences -> reward model -> "
        "PPO/GRPO -> report on CPU.",
    )
    parser.add_argument("--run-dir", default="runs/demo", help="where everything is written")
    parser.add_argument("--data-dir", help="directory with perturbench_devel.h5ad (else env/cache)")
    parser.add_argument("--offline", action="store_true", help="never download; simulate if needed")
    parser.add_argument("--simulated", action="store_true", help="use the simulator on purpose")
    parser.add_argument(
        "--data-config",
        help="your own data config YAML (configs/data/*.yaml: file + column mapping)",
    )
    parser.add_argument(
        "--flavour",
        default="cpu_demo",
        choices=("tiny", "cpu_demo", "gpu"),
        help="stage config flavour: tiny (minutes, CI), cpu_demo (default), gpu (bf16)",
    )
    parser.add_argument("--accelerate-config", help="accelerate YAML (default: single CPU)")
    parser.add_argument("--pipeline", default=DEMO_PIPELINE, help="pipeline YAML to run")
    parser.add_argument("--force", action="store_true", help="re-run finished stages")
    add_jobs_argument(parser)
    return parser


def _repo_root() -> Path:
    """Configs are resolved against the working directory; fall back to the source checkout."""
    if Path(DEMO_PIPELINE).exists():
        return Path.cwd()
    return Path(str(resources.files("cellrlhf"))).parent


def cli(argv: list[str]) -> int:
    from cellrlhf.pipeline.report import write_report
    from cellrlhf.pipeline.runner import StageFailed, run_pipeline
    from cellrlhf.pipeline.spec import load_pipeline

    args = make_parser().parse_args(argv)
    root = _repo_root()
    if root != Path.cwd():
        if not (root / DEMO_PIPELINE).exists():
            logger.error(
                "configs/ not found: run `cellrlhf demo` from the cellrlhf repository root."
            )
            return 2
        args.run_dir = str(Path(args.run_dir).resolve())
        os.chdir(root)
    if args.data_config:
        data_config, simulated = args.data_config, False
    elif args.simulated:
        data_config, simulated = SIMULATED_DATA_CONFIG, True
    else:
        data_config, simulated = choose_data_config(data_dir=args.data_dir, offline=args.offline)
    overrides = {"run_dir": args.run_dir, "data_config": data_config, "flavour": args.flavour}
    if args.accelerate_config:
        overrides["accelerate"] = args.accelerate_config
    spec = load_pipeline(args.pipeline, overrides=overrides)
    env = {"CELLRLHF_DATA_DIR": args.data_dir} if args.data_dir else None
    try:
        run_pipeline(spec, force=args.force, env=env, max_parallel=args.jobs)
    except StageFailed as err:
        logger.error("%s", err)
        return 1
    finally:
        paths = write_report(spec)
        logger.info("Report: %s (Markdown: %s)", paths["html"], paths["markdown"])
    label = "SIMULATED data" if simulated else "real data"
    logger.info(
        "Demo finished on %s. Chat with the result:\n  cellrlhf chat --model %s/ppo\n"
        "or serve it in a browser:\n  cellrlhf serve --model %s/ppo",
        label,
        spec.run_dir,
        spec.run_dir,
    )
    print_verdict(spec.run_dir)  # the last lines: did SFT / RL beat the baselines, with intervals
    return 0
