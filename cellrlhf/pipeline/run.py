"""``cellrlhf pipeline --config configs/pipeline/<name>.yaml``: run any pipeline file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["make_parser", "parse_overrides", "add_jobs_argument", "print_verdict", "cli"]

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
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="STAGE",
        help="run only these stages (in a swept file `sft` means every sft_f<fold>_s<seed>; "
        "sft_f0_s1 one of them)",
    )
    add_jobs_argument(parser)
    parser.add_argument("--no-report", action="store_true", help="skip the HTML/Markdown report")
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        action="store_true",
        help="print the stages (sweep expanded), what each waits for and its command; run none",
    )
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
    if args.dry_run:
        from cellrlhf.pipeline.plan import plan_lines

        print("\n".join(plan_lines(spec, only=args.only)))
        return 0
    try:
        run_pipeline(spec, force=args.force, only=args.only, max_parallel=args.jobs)
    except StageFailed as err:
        logger.error("%s", err)
        return 1
    if not args.no_report:
        from cellrlhf.pipeline.report import write_report

        paths = write_report(spec)
        logger.info("report: %s", paths["html"])
    print_verdict(spec.run_dir)
    return 0


def print_verdict(run_dir: str | Path) -> list[str]:
    """Print the run's verdict (one table and sentence per setting) as the terminal's last lines.

    Uses :func:`cellrlhf.evaluation.verdict.verdict_lines`; prints nothing when that module or
    the run's aggregate results are not there.

    Returns
    -------
    The printed lines.
    """
    try:
        from cellrlhf.evaluation.verdict import verdict_lines
    except ImportError:
        logger.debug("no verdict: cellrlhf.evaluation.verdict is not available")
        return []
    try:
        lines = list(verdict_lines(Path(run_dir)))
    except (OSError, ValueError, KeyError) as err:  # the run itself finished: say why, not crash
        logger.warning("no verdict for %s: %s", run_dir, err)
        return []
    if lines:
        lines += _evidence_notes(Path(run_dir))
        print("\n".join(["", "Verdict", *lines]), flush=True)
    return lines


def _evidence_notes(run_dir: Path) -> list[str]:
    """The evidence sentence of each distinct data set under ``run_dir`` (its data stages)."""
    import json

    from cellrlhf.data.evidence_config import evidence_note

    notes = []
    for path in sorted(run_dir.glob("**/manifest.json")):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        note = evidence_note(manifest) if "vocab" in manifest else None
        if note and note not in notes:
            notes.append(note)
    return notes
