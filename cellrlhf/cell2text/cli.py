"""``cellrlhf encode``: turn an .h5ad into cell sentences, written as Parquet shards.

Example::

    cellrlhf encode cells.h5ad --out sentences/ --layer counts --top-k 2048 \\
        --obs-columns cell_type,donor

The output directory loads with ``datasets.load_dataset("parquet", data_dir="sentences/")``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "cli"]

logger = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64), got {text}")
    return value


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def build_parser() -> argparse.ArgumentParser:
    from cellrlhf.cell2text.encoding import DEFAULT_CHUNK_SIZE
    from cellrlhf.cell2text.stream import DEFAULT_SHARD_SIZE

    parser = argparse.ArgumentParser(
        prog="cellrlhf encode",
        description="Rank each cell's expressed genes (highest first) into a cell sentence and "
        "write them as Parquet shards + manifest.json, streaming the .h5ad chunk by chunk.",
    )
    parser.add_argument("input", help="the .h5ad file (cells x genes)")
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--layer", default=None, help="layer to rank instead of X")
    parser.add_argument(
        "--top-k", type=_positive_int, default=None, help="keep at most K genes per cell"
    )
    parser.add_argument(
        "--gene-symbols",
        default=None,
        help="var column with gene symbols, when var_names are Ensembl IDs",
    )
    parser.add_argument(
        "--duplicates",
        choices=("error", "sum", "first"),
        default="error",
        help="what to do with repeated gene symbols (default: error)",
    )
    parser.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"cells read at a time; bounds memory (default {DEFAULT_CHUNK_SIZE})",
    )
    parser.add_argument(
        "--shard-size",
        type=_positive_int,
        default=DEFAULT_SHARD_SIZE,
        help=f"cells per Parquet file (default {DEFAULT_SHARD_SIZE})",
    )
    parser.add_argument("--seed", type=_seed, default=0, help="tie-breaking seed (default 0)")
    parser.add_argument(
        "--obs-columns",
        type=_columns,
        default=[],
        help="comma-separated obs columns to copy next to each sentence",
    )
    parser.add_argument(
        "--compression", default="zstd", help="Parquet compression codec (default zstd)"
    )
    parser.add_argument(
        "--checksum", action="store_true", help="record the sha256 of the input in the manifest"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier output in --out"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def cli(argv: Sequence[str] | None = None) -> int:
    """Run ``cellrlhf encode``; returns the exit status (0 success, 1 bad input)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from cellrlhf.cell2text.gene_names import GeneNameError
    from cellrlhf.cell2text.stream import write_sentences

    try:
        manifest = write_sentences(
            args.input,
            args.out,
            shard_size=args.shard_size,
            chunk_size=args.chunk_size,
            layer=args.layer,
            top_k=args.top_k,
            gene_symbols=args.gene_symbols,
            duplicates=args.duplicates,
            seed=args.seed,
            obs_columns=args.obs_columns,
            compression=args.compression,
            source_checksum=args.checksum,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (GeneNameError, ValueError, KeyError, FileNotFoundError, FileExistsError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"cellrlhf encode: error: {message}", file=sys.stderr)
        return 1
    print(
        f"{manifest['n_cells']} cell sentences ({manifest['n_empty']} empty) in "
        f"{len(manifest['shards'])} shard(s) under {args.out}"
    )
    return 0
