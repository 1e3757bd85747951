"""``cellrlhf pipeline --config configs/pipeline/<name>.yaml``: run any pipeline file."""

from __future__ import annotations

import argparse
import logging

__all__ = ["make_parser", "parse_overrides", "add_jobs_argument", "cli"]

logger = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellrlhf pipeline", description="Run every stage of a pipeline YAML, resumably."
    )
    parser.add_argument("--config", required=True, help="pipeline YAML (see configs/pipeline/)")
    parser.add_argument("--run-dir", help="override the file's run_dir")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a variable of the pipeline file (repeatable)",
    )
    parser.add_argument("--force", action="store_true", help="re-run finished stages")
    parser.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages")
    add_jobs_argument(parser)
    parser.add_argument("--no-report", action="store_true", help="skip the HTML/Markdown report")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_jobs_argument(parser: argparse.ArgumentParser) -> None:
    """``--jobs N``: how many stages whose needs are met may run at once."""
    parser.add_argument(
        "--jobs",
        "-j",
        type=_positive_int,
        metavar="N",
        help="run up to N independent stages at once (default: the pipeline file's max_parallel; "
        "stages wait for their `needs`)",
    )


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}`` with a clear error for malformed items."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"cellrlhf pipeline: --set expects NAME=VALUE, got {item!r}")
        out[name.strip()] = value
    return out


def cli(argv: list[str]) -> int:
    from cellrlhf.pipeline.runner import StageFailed, run_pipeline
    from cellrlhf.pipeline.spec import load_pipeline

    args = make_parser().parse_args(argv)
    overrides = parse_overrides(args.set)
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    spec = load_pipeline(args.config, overrides=overrides)
    try:
        run_pipeline(spec, force=args.force, only=args.only, max_parallel=args.jobs)
    except StageFailed as err:
        logger.error("%s", err)
        return 1
    if not args.no_report:
        from cellrlhf.pipeline.report import write_report

        paths = write_report(spec)
        logger.info("report: %s", paths["html"])
    return 0
