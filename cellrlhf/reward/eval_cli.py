"""``cellrlhf eval``: score predictions against real cells, next to baselines and ceilings.

Examples
--------
Evaluate a model's predicted cells (control cells as the model sees them included)::

    cellrlhf eval --pred model=pred.h5ad --real test.h5ad --out report/

Add every baseline (learned from the training cells), the split-half ceiling and the
representation ceiling of a decoder::

    cellrlhf eval --pred pred.h5ad --real test.h5ad --train train.h5ad \\
        --decoder global=data/expression_decoder.json --out report/

Writes ``metrics.csv``, ``summary.csv``, ``metrics.md``, ``metrics.png`` and
``delta_scatter.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["build_parser", "cli"]

logger = logging.getLogger(__name__)


def _named(value: str, default_name: str | None = None) -> tuple[str, str]:
    if "=" in value:
        name, path = value.split("=", 1)
        if not name or not path:
            raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {value!r}.")
        return name, path
    return default_name or Path(value).stem, value


def build_parser() -> argparse.ArgumentParser:
    from cellrlhf.reward.baselines import BASELINES

    p = argparse.ArgumentParser(
        prog="cellrlhf eval",
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
    p.add_argument("--real", required=True, help="real test cells (.h5ad), control included.")
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


def _read(path: str, what: str):
    import anndata as ad

    if not Path(path).exists():
        raise FileNotFoundError(f"{what} file {path} does not exist.")
    return ad.read_h5ad(path)


def cli(argv: list[str]) -> int:
    """Run ``cellrlhf eval``; returns the exit status."""
    from cellrlhf.reward.baselines import BASELINES
    from cellrlhf.reward.comparison import SPLIT_HALF, compare_methods
    from cellrlhf.reward.eval_report import markdown_summary, summary_table, write_report

    args = build_parser().parse_args(argv)
    if args.baselines == "all":
        baselines = list(BASELINES)
    elif args.baselines == "none":
        baselines = []
    else:
        baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
        unknown = sorted(set(baselines) - set(BASELINES))
        if unknown:
            raise SystemExit(
                f"cellrlhf eval: unknown baseline(s) {unknown}; choose from {BASELINES}."
            )
    if not args.pred and args.train is None and not args.decoder and args.no_split_half:
        raise SystemExit("cellrlhf eval: nothing to evaluate; pass --pred, --train or --decoder.")

    real = _read(args.real, "--real")
    predictions = {}
    for value in args.pred:
        name, path = _named(value)
        pred = _read(path, "--pred")
        if args.pred_layer is not None:
            pred.X = pred.layers[args.pred_layer]
        predictions[name] = pred
    train = _read(args.train, "--train") if args.train else None
    decoders = {}
    if args.decoder:
        from cellrlhf.cell2text.decoder import ExpressionDecoder

        for value in args.decoder:
            name, path = _named(value)
            loaded = ExpressionDecoder.load(path)
            decoders[name if "=" in value else loaded.method] = loaded
    encode_kwargs = {"gene_symbols": args.gene_symbols} if args.gene_symbols else {}
    evaluations = compare_methods(
        real,
        predictions=predictions,
        train=train,
        baselines=baselines,
        split_half_ceiling=not args.no_split_half,
        decoders=decoders,
        pert_col=args.pert_col,
        control=args.control,
        layer=args.layer,
        seed=args.seed,
        encode_kwargs=encode_kwargs,
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
