"""``cellrlhf chat``: talk to a model about your cells in the terminal.

::

    cellrlhf chat --model runs/sft --adata pbmc.h5ad
    > /cell 42                 select a cell (index or obs name)
    > what cell type is this?  answers stream as they are generated
    > /perturb KLF1 context=K562
    > /save klf1.h5ad

The options (:class:`ChatOptions`) are flags or keys of a ``--config`` YAML, flags overriding it.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from cellrlhf.chat.model_args import ModelOptions
from cellrlhf.chat.session import MAX_GENERATED, MAX_SAMPLES, CellSelectionError, check_count

__all__ = ["HELP", "ChatOptions", "Repl", "cli", "load_session", "make_parser"]

logger = logging.getLogger(__name__)

HELP = f"""\
Commands (anything else is a question to the model about the selected cell):
  /cell INDEX|NAME          select a cell of the data (0-based index or obs name)
  /genes G1 G2 ...          select a cell typed as genes, highest expressed first
  /cells [N]                list the first N cells of the data (default 10)
  /info                     the model: stage, genes, cell types and perturbations it was trained on
  /show                     show the selected cell's sentence
  /annotate                 the model's cell type for the selected cell, with its score
  /perturb TARGETS [context=C] [type=T] [samples=N] [seed=S]
                            predict the selected cell after perturbing TARGETS (KLF1 or KLF1+CEBPA);
                            samples at most {MAX_SAMPLES}
  /generate CELL_TYPE [N]   generate N cells of a type (quote types with spaces: "T cell"),
                            N at most {MAX_GENERATED}
  /save FILE.h5ad           save the last prediction or generated cells as AnnData
  /history                  show the conversation
  /clear                    start a new conversation about the same cell
  /help                     this help
  /quit                     leave (or Ctrl-D)
Ctrl-C cancels a running answer or command; the conversation is kept."""


def _options(args: list[str], allowed: dict[str, Callable]) -> tuple[list[str], dict]:
    """Split ``key=value`` options (types from ``allowed``) from positional words."""
    words, opts = [], {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in allowed:
            try:
                opts[key] = allowed[key](value)
            except ValueError:
                raise ValueError(
                    f"option {key}={value!r} is not a valid {allowed[key].__name__}."
                ) from None
        elif sep:
            raise ValueError(f"unknown option {key!r}; options: {', '.join(allowed)}.")
        else:
            words.append(arg)
    return words, opts


class Repl:
    """The read-eval-print loop over a :class:`~cellrlhf.chat.session.ChatSession`.

    Parameters
    ----------
    session
        The chat state.
    out
        Where answers are written (``sys.stdout``).
    generation
        Generation options of free answers (``max_new_tokens``, ``temperature``, ``seed``).
    """

    def __init__(self, session, *, out: TextIO | None = None, generation: dict | None = None):
        self.session = session
        self.out = out or sys.stdout
        self.generation = generation or {}
        self.commands: dict[str, Callable[[list[str]], None]] = {
            "cell": self._cell,
            "genes": self._genes,
            "cells": self._cells,
            "show": self._show,
            "info": self._info,
            "annotate": self._annotate,
            "perturb": self._perturb,
            "generate": self._generate,
            "save": self._save,
            "history": self._history,
            "clear": self._clear,
            "help": lambda _: self.say(HELP),
        }

    # ------------------------------------------------------------------ io
    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    @property
    def prompt(self) -> str:
        cell = self.session.cell
        return f"[{cell.cell_id}] > " if cell is not None else "[no cell] > "

    def handle(self, line: str) -> bool:
        """Run one input line; ``False`` when the user wants to leave."""
        line = line.strip()
        if not line:
            return True
        if line.startswith("/"):
            try:
                name, *args = shlex.split(line[1:])
            except ValueError as err:
                self.say(f"error: {err}")
                return True
            if name in {"quit", "exit", "q"}:
                return False
            command = self.commands.get(name)
            if command is None:
                self.say(f"error: unknown command /{name}; /help lists the commands.")
                return True
            self._guard(command, args)
            return True
        self._guard(self._ask, line)
        return True

    def _guard(self, fn, arg) -> None:
        from cellrlhf.chat.cell_input import UnknownGenesError

        try:
            fn(arg)
        except KeyboardInterrupt:  # Ctrl-C cancels the command, not the REPL
            self.say("\n(cancelled; the conversation and the selected cell are kept)")
        except (CellSelectionError, UnknownGenesError, ValueError, KeyError, OSError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            self.say(f"error: {message}")

    def run(self, read: Callable[[str], str] = input) -> int:
        """Loop until ``/quit`` or end of input."""
        self.say("Type /help for commands, /quit to leave.")
        while True:
            try:
                line = read(self.prompt)
            except EOFError:
                self.say()
                return 0
            except KeyboardInterrupt:
                self.say("\n(interrupted; /quit to leave)")
                continue
            if not self.handle(line):
                return 0

    # ------------------------------------------------------------------ commands
    def _ask(self, question: str) -> None:
        if self.session.cell is None and self.session.adata is not None:
            self.say("(no cell selected: asking without a cell; /cell N selects one)")
        try:
            for piece in self.session.ask(question, stream=True, **self.generation):
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            self.say("\n(answer cancelled; the conversation before it is kept)")
            return
        self.say()

    def _cell(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ValueError("usage: /cell INDEX_OR_NAME")
        cell = self.session.select_cell(args[0])
        self.say(
            f"cell {cell.cell_id} (row {cell.index}): {cell.n_genes} expressed genes the model "
            f"knows: {cell.preview()}"
        )

    def _genes(self, args: list[str]) -> None:
        if not args:
            raise ValueError("usage: /genes G1 G2 ... (highest expressed first)")
        cell = self.session.select_genes(args)
        self.say(f"typed cell of {cell.n_genes} genes: {cell.preview()}")

    def _cells(self, args: list[str]) -> None:
        adata = self.session.adata
        if adata is None:
            raise ValueError("no data loaded: start with --adata FILE.h5ad.")
        n = int(args[0]) if args else 10
        columns = [c for c in adata.obs.columns[:3]]
        for i, name in enumerate(adata.obs_names[:n]):
            extra = "  ".join(f"{c}={adata.obs[c].iloc[i]}" for c in columns)
            self.say(f"{i:>6}  {name}  {extra}")
        if adata.n_obs > n:
            self.say(f"... {adata.n_obs} cells in all")

    def _info(self, _args) -> None:
        lm = self.session.lm
        contexts = ", ".join(lm.cell_contexts) or "(not recorded)"
        targets = sorted(lm.data_manifest.get("perturbation_targets") or [])
        shown = ", ".join(targets[:30]) + (f" ... ({len(targets)})" if len(targets) > 30 else "")
        self.say(f"model {lm.path}: stage {lm.stage}, {len(lm.vocab)} genes")
        self.say(f"cell contexts: {contexts}")
        self.say(f"perturbation targets: {shown or '(none recorded)'}")

    def _show(self, _args) -> None:
        cell = self.session._require_cell()
        self.say(f"{cell.cell_id}: {cell.sentence}")

    def _annotate(self, _args) -> None:
        row = self.session.annotate().iloc[0]
        self.say(f"{row['label']}  (score {row['score']:.3f})")

    def _perturb(self, args: list[str]) -> None:
        words, opts = _options(args, {"context": str, "type": str, "samples": int, "seed": int})
        if len(words) != 1:
            raise ValueError("usage: /perturb TARGETS [context=C] [type=T] [samples=N] [seed=S]")
        samples = opts.get("samples", 1)
        check_count("samples", samples, MAX_SAMPLES)
        self.say(f"predicting {words[0]} ... (Ctrl-C cancels)")
        pred = self.session.predict(
            words[0],
            cell_context=opts.get("context"),
            perturbation_type=opts.get("type"),
            n_samples=samples,
            seed=opts.get("seed", 0),
        )
        ctx = pred.adata.obs["cell_context"].iloc[0]
        self.say(
            f"{pred.perturbation} in {ctx}: {pred.adata.n_obs} predicted cell(s), valid gene "
            f"fraction {pred.valid_fraction:.2f}"
        )
        for name, table in (("up", pred.top_up), ("down", pred.top_down)):
            genes = ", ".join(
                f"{g} ({d:+.2f})"
                for g, d in zip(table["gene"][:10], table["delta"][:10], strict=True)
            )
            self.say(f"  {name}: {genes or '-'}")
        self.say("(/save FILE.h5ad keeps it)")

    def _generate(self, args: list[str]) -> None:
        words, opts = _options(args, {"seed": int, "temperature": float})
        if not words or len(words) > 2:
            raise ValueError('usage: /generate CELL_TYPE [N]   (quote types with spaces: "T cell")')
        try:
            n = int(words[1]) if len(words) == 2 else 1
        except ValueError:
            raise ValueError(f"N={words[1]!r} is not a whole number of cells.") from None
        check_count("N", n, MAX_GENERATED)
        self.say(f"generating {n} {words[0]} cell(s) ... (Ctrl-C cancels)")
        adata = self.session.generate(words[0], n, **opts)
        self.say(
            f"{adata.n_obs} {words[0]} cell(s), mean valid gene fraction "
            f"{adata.obs['valid_fraction'].mean():.2f}"
        )
        for name, sentence in zip(adata.obs_names[:5], adata.obs["cell_sentence"][:5], strict=True):
            self.say(f"  {name}: {' '.join(sentence.split()[:12])} ...")
        self.say("(/save FILE.h5ad keeps them)")

    def _save(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ValueError("usage: /save FILE.h5ad")
        path = self.session.save(args[0])
        self.say(f"saved {self.session.last_result.n_obs} cell(s) to {path}")

    def _history(self, _args) -> None:
        if not self.session.messages:
            self.say("(no conversation yet)")
        for m in self.session.messages:
            self.say(f"{m['role']}: {m['content']}")

    def _clear(self, _args) -> None:
        self.session.clear()
        self.say("conversation cleared")


@dataclass
class ChatOptions(ModelOptions):
    """Options of ``cellrlhf chat`` (flags, or keys of a ``--config`` YAML)."""

    adata: str | None = field(
        default=None, metadata={"help": ".h5ad file with cells to talk about"}
    )
    layer: str | None = field(
        default=None, metadata={"help": "layer of --adata with expression (default X)"}
    )
    gene_symbols: str | None = field(
        default=None, metadata={"help": "var column with gene symbols"}
    )
    max_new_tokens: int = field(default=512, metadata={"help": "token budget of answers"})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy answers"})
    seed: int = field(default=0, metadata={"help": "seed of sampled answers"})

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens {self.max_new_tokens}: give at least 1.")
        if self.temperature < 0:
            raise ValueError(f"--temperature {self.temperature}: give 0 (greedy) or more.")


def make_parser(prog: str = "cellrlhf chat"):
    """The :class:`~cellrlhf.cli_help.CellTrlParser` of :class:`ChatOptions`."""
    from cellrlhf.cli_help import CellTrlParser

    return CellTrlParser(
        (ChatOptions,),
        prog=prog,
        description="Chat with a cell language model about your cells.",
    )


def load_session(options: ChatOptions):
    """Load the model (and data) that ``options`` name into a ChatSession."""
    from cellrlhf.chat.session import ChatSession

    lm = options.load_model()
    adata = None
    if options.adata:
        import anndata as ad

        adata = ad.read_h5ad(options.adata)
    return ChatSession(lm, adata, layer=options.layer, gene_symbols=options.gene_symbols)


def cli(argv: Sequence[str] | None = None) -> int:
    """``cellrlhf chat``: returns the process exit status."""
    (options,) = make_parser().parse_args_and_config(argv)
    print(f"loading {options.model} ...", flush=True)
    try:
        session = load_session(options)
    except (FileNotFoundError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"cellrlhf chat: {message}", file=sys.stderr)
        return 2
    lm = session.lm
    data = (
        f"; data {options.adata}: {session.adata.n_obs} cells x {session.adata.n_vars} genes"
        if session.adata is not None
        else ""
    )
    print(f"model {lm.path} ({lm.stage}, {len(lm.vocab)} genes){data}", flush=True)
    with contextlib.suppress(ImportError):  # not on every platform
        import readline  # noqa: F401  (arrow keys and history for input())
    logging.getLogger("cellrlhf").setLevel(logging.WARNING)
    repl = Repl(
        session,
        generation={
            "max_new_tokens": options.max_new_tokens,
            "temperature": options.temperature,
            "seed": options.seed,
        },
    )
    return repl.run()
