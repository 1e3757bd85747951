"""``cellrlhf evaluate``: one command, two inputs, one scoring path.

Models on a built dataset's held-out prompts (``--dataset_dir``; :mod:`cellrlhf.evaluation.cli`)::

    cellrlhf evaluate --dataset_dir runs/demo/data --model sft=runs/demo/sft --out runs/demo/eval

Prediction files you made yourself, without a model or a dataset directory (``--real``)::

    cellrlhf evaluate --real test.h5ad --pred model=pred.h5ad --out report/
    cellrlhf evaluate --real test.h5ad --pred pred.h5ad --train train.h5ad \\
        --decoder global=data/expression_decoder.json --out report/

Both score with :func:`~cellrlhf.evaluation.comparison.compare_methods` (predictions next to the
baselines learned from ``--train``, the split-half ceiling and a decoder's representation
ceiling) and write :func:`~cellrlhf.evaluation.eval_report.write_report`'s ``metrics.csv``,
``summary.csv``, ``metrics.md``, ``metrics.png`` and ``delta_scatter.png``. ``cellrlhf eval``
is the older name of the ``--real`` form; it still runs, with a notice.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cellrlhf.evaluation.cli import cli as models_cli
from cellrlhf.evaluation.cli import make_parser

__all__ = ["cli", "eval_alias", "files_cli", "files_parser", "make_parser"]

FILES_FLAG = "--real"
FILES_HELP = (
    "\nprediction files (no model, no dataset directory):\n"
    "  cellrlhf evaluate --real TEST.h5ad --pred [NAME=]PRED.h5ad [--train TRAIN.h5ad] "
    "--out DIR\n  (cellrlhf evaluate --real TEST.h5ad --help for every option of this form)"
)
DEPRECATION = "cellrlhf eval is deprecated: run `cellrlhf evaluate --real ...` (same options)."


def _named(value: str) -> tuple[str, str]:
    if "=" in value:
        name, path = value.split("=", 1)
        if not name or not path:
            raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {value!r}.")
        return name, path
    return Path(value).stem, value


def files_parser(prog: str = "cellrlhf evaluate") -> argparse.ArgumentParser:
    """The parser of the ``--real`` form (prediction files against real cells)."""
    from cellrlhf.evaluation.baselines import BASELINES

    p = argparse.ArgumentParser(
        prog=prog,
        description="Score perturbation predictions against real cells, with baselines and "
        "ceilings, and write a metric table and plots.",
    )
    p.add_argument(
        "--pred",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="prediction .h5ad (repeatable): predicted cells or one pseudo-bulk row per "
        "perturbation, plus control cells as the predictor sees them.",
    )
    p.add_argument(FILES_FLAG, required=True, help="real test cells (.h5ad), control included.")
    p.add_argument("--out", required=True, help="output directory.")
    p.add_argument("--pert-col", default="perturbation", help="obs column of perturbations.")
    p.add_argument("--control", default="control", help="label of control cells.")
    p.add_argument("--layer", default=None, help="expression layer of --real/--train (default X).")
    p.add_argument("--pred-layer", default=None, help="expression layer of --pred (default X).")
    p.add_argument("--train", default=None, help="training cells (.h5ad) for the baselines.")
    p.add_argument(
        "--baselines",
        default="all",
        help=f"comma-separated baselines with --train ({','.join(BASELINES)}), 'all' or 'none'.",
    )
    p.add_argument(
        "--no-split-half", action="store_true", help="skip the split-half real-vs-real ceiling."
    )
    p.add_argument(
        "--decoder",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="expression decoder (directory or expression_decoder.json; repeatable): adds the "
        "representation ceiling (real cells -> sentences -> decoded).",
    )
    p.add_argument("--gene-symbols", default=None, help="var column of gene symbols (encoding).")
    p.add_argument("--top-k", type=int, default=20, help="genes of pearson_delta_top{k}.")
    p.add_argument("--no-de", action="store_true", help="skip the DE tests and DE metrics.")
    p.add_argument("--seed", type=int, default=0, help="seed of the split-half ceiling.")
    p.add_argument("--title", default="Perturbation prediction metrics")
    return p


def _baselines(parser: argparse.ArgumentParser, value: str) -> list[str]:
    from cellrlhf.evaluation.baselines import BASELINES

    if value in ("all", "none"):
        return list(BASELINES) if value == "all" else []
    chosen = [b.strip() for b in value.split(",") if b.strip()]
    unknown = sorted(set(chosen) - set(BASELINES))
    if unknown:
        parser.error(f"unknown baseline(s) {unknown}; choose from {BASELINES}.")
    return chosen


def _read(path: str, what: str):
    import anndata as ad

    if not Path(path).exists():
        raise FileNotFoundError(f"{what} file {path} does not exist.")
    return ad.read_h5ad(path)


def files_cli(argv: Sequence[str], prog: str = "cellrlhf evaluate") -> int:
    """Run the ``--real`` form; returns the exit status."""
    from cellrlhf.evaluation.comparison import SPLIT_HALF, compare_methods
    from cellrlhf.evaluation.eval_report import markdown_summary, summary_table, write_report

    parser = files_parser(prog)
    args = parser.parse_args(list(argv))
    baselines = _baselines(parser, args.baselines)
    if not args.pred and args.train is None and not args.decoder and args.no_split_half:
        parser.error("nothing to evaluate; pass --pred, --train or --decoder.")
    real = _read(args.real, FILES_FLAG)
    predictions = {}
    for value in args.pred:
        name, path = _named(value)
        predictions[name] = pred = _read(path, "--pred")
        if args.pred_layer is not None:
            pred.X = pred.layers[args.pred_layer]
    decoders = {}
    if args.decoder:
        from cellrlhf.cell2text.decoder import ExpressionDecoder

        for value in args.decoder:
            name, path = _named(value)
            loaded = ExpressionDecoder.load(path)
            decoders[name if "=" in value else loaded.method] = loaded
    evaluations = compare_methods(
        real,
        predictions=predictions,
        train=_read(args.train, "--train") if args.train else None,
        baselines=baselines,
        split_half_ceiling=not args.no_split_half,
        decoders=decoders,
        pert_col=args.pert_col,
        control=args.control,
        layer=args.layer,
        seed=args.seed,
        encode_kwargs={"gene_symbols": args.gene_symbols} if args.gene_symbols else {},
        top_k=args.top_k,
        de=not args.no_de,
        progress=True,
    )
    split = SPLIT_HALF if SPLIT_HALF in evaluations else None
    paths = write_report(
        evaluations,
        args.out,
        title=args.title,
        scatter_method=next(iter(predictions), None),
        spearman_brown_from=split,
    )
    print(markdown_summary(summary_table(evaluations, spearman_brown_from=split)))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """``cellrlhf evaluate``: the ``--real`` form when ``--real`` is given, else models."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == FILES_FLAG or a.startswith(FILES_FLAG + "=") for a in argv):
        return files_cli(argv)
    if any(a in ("-h", "--help") for a in argv):
        make_parser().print_help()
        print(FILES_HELP)
        return 0
    return models_cli(argv)


def eval_alias(argv: Sequence[str] | None = None) -> int:
    """``cellrlhf eval`` (deprecated): the ``--real`` form of ``cellrlhf evaluate``."""
    print(DEPRECATION, file=sys.stderr)
    return files_cli(list(sys.argv[1:] if argv is None else argv))
