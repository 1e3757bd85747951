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

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cellrlhf.cli_help import RepeatableOption
from cellrlhf.evaluation.cli import cli as models_cli
from cellrlhf.evaluation.cli import make_parser

__all__ = ["FilesOptions", "cli", "eval_alias", "files_cli", "files_parser", "make_parser"]

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
            raise ValueError(f"expected NAME=PATH, got {value!r}.")
        return name, path
    return Path(value).stem, value


@dataclass
class FilesOptions:
    """Options of the ``--real`` form (flags, or keys of a ``--config`` YAML)."""

    real: str = field(metadata={"help": "real test cells (.h5ad), control included"})
    out: str = field(metadata={"help": "output directory"})
    pred: list[str] = field(
        default_factory=list,
        metadata={
            "action": RepeatableOption,
            "metavar": "[NAME=]PATH",
            "help": "prediction .h5ad (repeatable): predicted cells or one pseudo-bulk row per "
            "perturbation, plus control cells as the predictor sees them",
        },
    )
    train: str | None = field(
        default=None, metadata={"help": "training cells (.h5ad) for the baselines"}
    )
    baselines: str = field(
        default="all",
        metadata={"help": "comma-separated baselines with --train, 'all' or 'none'"},
    )
    split_half: bool = field(
        default=True, metadata={"help": "add the split-half real-vs-real ceiling"}
    )
    decoder: list[str] = field(
        default_factory=list,
        metadata={
            "action": RepeatableOption,
            "metavar": "[NAME=]PATH",
            "help": "expression decoder (directory or expression_decoder.json; repeatable): adds "
            "the representation ceiling (real cells -> sentences -> decoded)",
        },
    )
    pert_col: str = field(default="perturbation", metadata={"help": "obs column of perturbations"})
    control: str = field(default="control", metadata={"help": "label of control cells"})
    layer: str | None = field(
        default=None, metadata={"help": "expression layer of --real/--train (default X)"}
    )
    pred_layer: str | None = field(
        default=None, metadata={"help": "expression layer of --pred (default X)"}
    )
    gene_symbols: str | None = field(
        default=None, metadata={"help": "var column of gene symbols (encoding)"}
    )
    top_k: int = field(default=20, metadata={"help": "genes of pearson_delta_top{k}"})
    de: bool = field(default=True, metadata={"help": "run the DE tests for the DE metrics"})
    seed: int = field(default=0, metadata={"help": "seed of the split-half ceiling"})
    title: str = field(default="Perturbation prediction metrics", metadata={"help": "report title"})

    def __post_init__(self) -> None:
        if not self.pred and self.train is None and not self.decoder and not self.split_half:
            raise ValueError("nothing to evaluate; pass --pred, --train or --decoder.")


def files_parser(prog: str = "cellrlhf evaluate"):
    """The parser of the ``--real`` form (prediction files against real cells)."""
    from cellrlhf.cli_help import CellTrlParser

    return CellTrlParser(
        (FilesOptions,),
        prog=prog,
        description="Score perturbation predictions against real cells, with baselines and "
        "ceilings, and write a metric table and plots.",
    )


def _baselines(value: str) -> list[str]:
    from cellrlhf.evaluation.baselines import BASELINES

    if value in ("all", "none"):
        return list(BASELINES) if value == "all" else []
    chosen = [b.strip() for b in value.split(",") if b.strip()]
    unknown = sorted(set(chosen) - set(BASELINES))
    if unknown:
        raise ValueError(f"--baselines: unknown baseline(s) {unknown}; choose from {BASELINES}.")
    return chosen


def _read(path: str, what: str):
    import anndata as ad

    if not Path(path).exists():
        raise FileNotFoundError(f"{what} file {path} does not exist.")
    return ad.read_h5ad(path)


def _decoders(values: list[str]) -> dict:
    if not values:
        return {}
    from cellrlhf.cell2text.decoder import ExpressionDecoder

    decoders = {}
    for value in values:
        name, path = _named(value)
        loaded = ExpressionDecoder.load(path)
        decoders[name if "=" in value else loaded.method] = loaded
    return decoders


def main(options: FilesOptions) -> dict:
    """Score the ``--real`` form's files and write the report; returns the written paths."""
    from cellrlhf.evaluation.comparison import SPLIT_HALF, compare_methods
    from cellrlhf.evaluation.eval_report import markdown_summary, summary_table, write_report

    baselines = _baselines(options.baselines)
    real = _read(options.real, FILES_FLAG)
    predictions = {}
    for value in options.pred:
        name, path = _named(value)
        predictions[name] = pred = _read(path, "--pred")
        if options.pred_layer is not None:
            pred.X = pred.layers[options.pred_layer]
    evaluations = compare_methods(
        real,
        predictions=predictions,
        train=_read(options.train, "--train") if options.train else None,
        baselines=baselines,
        split_half_ceiling=options.split_half,
        decoders=_decoders(options.decoder),
        pert_col=options.pert_col,
        control=options.control,
        layer=options.layer,
        seed=options.seed,
        encode_kwargs={"gene_symbols": options.gene_symbols} if options.gene_symbols else {},
        top_k=options.top_k,
        de=options.de,
        progress=True,
    )
    split = SPLIT_HALF if SPLIT_HALF in evaluations else None
    paths = write_report(
        evaluations,
        options.out,
        title=options.title,
        scatter_method=next(iter(predictions), None),
        spearman_brown_from=split,
    )
    print(markdown_summary(summary_table(evaluations, spearman_brown_from=split)))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return paths


def files_cli(argv: Sequence[str], prog: str = "cellrlhf evaluate") -> int:
    """Run the ``--real`` form; returns the exit status."""
    (options,) = files_parser(prog).parse_args_and_config(list(argv))
    main(options)
    return 0


def _files_form(argv: list[str]) -> bool:
    """Whether ``argv`` asks for the ``--real`` form: the flag, or a ``real`` key in --config."""
    import yaml

    if any(a == FILES_FLAG or a.startswith(FILES_FLAG + "=") for a in argv):
        return True
    configs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    configs += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if not configs or not Path(configs[0]).is_file():
        return False
    spec = yaml.safe_load(Path(configs[0]).read_text())
    return isinstance(spec, dict) and "real" in spec


def cli(argv: Sequence[str] | None = None) -> int:
    """``cellrlhf evaluate``: the ``--real`` form when ``--real`` is given, else models."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if _files_form(argv):
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
