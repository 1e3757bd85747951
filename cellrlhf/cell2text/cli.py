"""``cellrlhf encode``: turn an .h5ad into cell sentences, written as Parquet shards.

Example::

    cellrlhf encode cells.h5ad --out sentences/ --layer counts --top-k 2048 \\
        --obs-columns cell_type,donor

Options are :class:`EncodeOptions` fields: flags, or keys of a ``--config`` YAML file (flags
override it); the input file is the positional argument, ``--input`` or ``input:`` in the YAML.
The output directory loads with ``datasets.load_dataset("parquet", data_dir="sentences/")``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from cellrlhf.cell2text.encoding import DEFAULT_CHUNK_SIZE
from cellrlhf.cell2text.stream import DEFAULT_SHARD_SIZE

__all__ = ["EncodeOptions", "cli", "main", "make_parser", "parse"]

logger = logging.getLogger(__name__)

_POSITIONAL = "input_file"


@dataclass
class EncodeOptions:
    """Options of ``cellrlhf encode``."""

    out: str = field(metadata={"help": "output directory (created)"})
    input: str | None = field(
        default=None, metadata={"help": "the .h5ad file (cells x genes); or give it positionally"}
    )
    layer: str | None = field(default=None, metadata={"help": "layer to rank instead of X"})
    top_k: int | None = field(default=None, metadata={"help": "keep at most K genes per cell"})
    gene_symbols: str | None = field(
        default=None,
        metadata={"help": "var column with gene symbols, when var_names are Ensembl IDs"},
    )
    duplicates: Literal["error", "sum", "first"] = field(
        default="error", metadata={"help": "what to do with repeated gene symbols"}
    )
    chunk_size: int = field(
        default=DEFAULT_CHUNK_SIZE, metadata={"help": "cells read at a time; bounds memory"}
    )
    shard_size: int = field(default=DEFAULT_SHARD_SIZE, metadata={"help": "cells per Parquet file"})
    seed: int = field(default=0, metadata={"help": "tie-breaking seed, in [0, 2**64)"})
    obs_columns: list[str] = field(
        default_factory=list,
        metadata={"help": "obs columns to copy next to each sentence (a b, or a,b)"},
    )
    compression: str = field(default="zstd", metadata={"help": "Parquet compression codec"})
    checksum: bool = field(
        default=False, metadata={"help": "record the sha256 of the input in the manifest"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace an earlier output in --out"})
    no_progress: bool = field(default=False, metadata={"help": "hide the progress bar"})

    def __post_init__(self) -> None:
        for name in ("top_k", "chunk_size", "shard_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be a positive integer, got {value}.")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"--seed must be in [0, 2**64), got {self.seed}.")
        self.obs_columns = [c.strip() for v in self.obs_columns for c in v.split(",") if c.strip()]


def make_parser(prog: str = "cellrlhf encode"):
    """The :class:`~cellrlhf.cli_help.CellTrlParser` of :class:`EncodeOptions`, plus the input
    file as an optional positional argument."""
    from cellrlhf.cli_help import CellTrlParser

    parser = CellTrlParser(
        (EncodeOptions,),
        prog=prog,
        usage="%(prog)s [FILE.h5ad] [--config FILE.yaml] --out DIR [--OPTION VALUE ...]",
        description="Rank each cell's expressed genes (highest first) into a cell sentence and "
        "write them as Parquet shards + manifest.json, streaming the .h5ad chunk by chunk.",
    )
    parser.add_argument(
        _POSITIONAL, nargs="?", metavar="FILE.h5ad", help="the .h5ad file (same as --input)"
    )
    return parser


def parse(argv: Sequence[str] | None = None) -> EncodeOptions:
    """The options of a command line, the positional input file merged into ``input``."""
    parser = make_parser()
    options, extra = parser.parse_args_and_config(argv)
    positional = getattr(extra, _POSITIONAL)
    if positional is not None and options.input is not None and positional != options.input:
        parser.error(f"two input files: {positional} and --input {options.input}; give one")
    options.input = positional or options.input
    if options.input is None:
        parser.error("name the .h5ad file: cellrlhf encode FILE.h5ad --out DIR")
    return options


def main(options: EncodeOptions) -> dict:
    """Encode ``options.input`` into ``options.out``; returns the manifest."""
    from cellrlhf.cell2text.stream import write_sentences

    return write_sentences(
        options.input,
        options.out,
        shard_size=options.shard_size,
        chunk_size=options.chunk_size,
        layer=options.layer,
        top_k=options.top_k,
        gene_symbols=options.gene_symbols,
        duplicates=options.duplicates,
        seed=options.seed,
        obs_columns=options.obs_columns,
        compression=options.compression,
        source_checksum=options.checksum,
        overwrite=options.overwrite,
        progress=not options.no_progress,
    )


def cli(argv: Sequence[str] | None = None) -> int:
    """Run ``cellrlhf encode``; returns the exit status (0 success, 1 bad input)."""
    from cellrlhf.cell2text.gene_names import GeneNameError

    options = parse(argv)
    try:
        manifest = main(options)
    except (GeneNameError, ValueError, KeyError, FileNotFoundError, FileExistsError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"cellrlhf encode: error: {message}", file=sys.stderr)
        return 1
    print(
        f"{manifest['n_cells']} cell sentences ({manifest['n_empty']} empty) in "
        f"{len(manifest['shards'])} shard(s) under {options.out}"
    )
    return 0
