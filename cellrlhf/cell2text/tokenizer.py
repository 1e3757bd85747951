"""Tokenizers for cell language models, in three modes, all with the project's chat template.

``"gene_tokens"`` (:func:`build_cell_tokenizer`)
    A tokenizer built from scratch for models pretrained on cell sentences: every gene symbol is
    exactly one token (with its leading space, ``"▁CD3E"``), plus a small natural-language
    vocabulary fitted on the task templates, 256 byte-fallback tokens (any text can be written)
    and the special tokens. A Unigram model with a Metaspace pre-tokenizer: gene pieces score
    above any segmentation, so a word that is exactly a gene symbol is always that gene's token.
``"added_gene_tokens"`` (:func:`add_gene_tokens`)
    A pretrained LM's tokenizer plus one added token per gene (``" CD3E"``, leading space
    included). :func:`gene_token_init_pieces` gives, for each new token, the base tokenizer's
    pieces of its text, to initialise the new embedding rows from their mean.
``"genes_as_text"`` (:func:`genes_as_text_tokenizer`)
    A pretrained LM's tokenizer unchanged (Cell2Sentence checkpoints read genes as plain
    upper-case words); only the chat template is attached.

Every mode decodes exactly what it encodes (``decode(encode(text)) == text``, without special
tokens) for cell sentences and chat text. The mode is saved with the tokenizer
(``tokenizer_config.json``, key ``cellrlhf_tokenizer_mode``); :func:`load_cell_tokenizer` reads
it back. Markup (``<cell>``, ``</cell>``, ``<pert>``...) is never dropped by
``decode(..., skip_special_tokens=True)``, so generated cells can always be extracted.

Known limit of the ``gene_tokens`` mode (shared with SentencePiece/Llama tokenizers): a text that
starts with a space, not after a special token, decodes without that one leading space.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cellrlhf.cell2text.markup import MARKUP_TOKENS
from cellrlhf.cell2text.text_pieces import SPACE, fit_text_pieces, metaspace
from cellrlhf.cell2text.vocab import GeneVocab

__all__ = [
    "markup_token_id",
    "BOS_TOKEN",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "UNK_TOKEN",
    "ROLE_TOKENS",
    "TOKENIZER_MODES",
    "MODE_KEY",
    "GeneTokenAddition",
    "add_gene_tokens",
    "build_cell_tokenizer",
    "chat_template",
    "gene_token_ids",
    "gene_token_init_pieces",
    "genes_as_text_tokenizer",
    "load_cell_tokenizer",
    "round_trip_failures",
    "tokenizer_mode",
]

logger = logging.getLogger(__name__)

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
TOKENIZER_MODES = ("gene_tokens", "added_gene_tokens", "genes_as_text")
MODE_KEY = "cellrlhf_tokenizer_mode"

_BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
_NEVER = -1e6  # score of pieces Viterbi must never pick by themselves (specials, bytes)


def chat_template() -> str:
    """The project's chat template (Jinja), with ``{% generation %}`` around assistant turns."""
    return resources.files("cellrlhf.cell2text").joinpath("chat_template.jinja").read_text()


# ---------------------------------------------------------------------- mode (a): from scratch
def build_cell_tokenizer(
    vocab: GeneVocab | Sequence[str],
    *,
    extra_genes: Iterable[str] = (),
    texts: Iterable[str] = (),
    vocab_size: int = 2000,
    model_max_length: int | None = None,
):
    """A tokenizer in which every gene symbol is one token (mode ``"gene_tokens"``).

    Parameters
    ----------
    vocab
        The measured genes (a :class:`GeneVocab` or symbols).
    extra_genes
        More symbols that need tokens though not measured: perturbation targets. Symbols equal,
        case-insensitively, to a measured gene are skipped.
    texts
        Natural-language text the tokenizer should write compactly (prompt templates, answers).
        A Unigram vocabulary of at most ``vocab_size`` pieces is fitted on it; without texts the
        natural-language part is single characters. Text outside it still round-trips (bytes).
    vocab_size
        Size of the natural-language part (genes, bytes and special tokens come on top).
    model_max_length
        Stored as the tokenizer's ``model_max_length`` (the model's context size).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        Ids: special tokens first (``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, markup, roles),
        then the 256 byte tokens, the natural-language pieces, and the genes last, in
        vocabulary order followed by ``extra_genes``.
    """
    from tokenizers import Tokenizer, decoders, models, processors

    genes = _gene_list(vocab, extra_genes)
    specials = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, *MARKUP_TOKENS, *ROLE_TOKENS]
    gene_pieces = [SPACE + g for g in genes]
    reserved = set(specials) | set(_BYTE_TOKENS) | set(gene_pieces)
    fitted = fit_text_pieces(texts, vocab_size, unk_token=UNK_TOKEN)
    text_pieces = [(p, s) for p, s in fitted if p not in reserved]
    pieces = (
        [(t, _NEVER) for t in specials]
        + [(t, _NEVER) for t in _BYTE_TOKENS]
        + text_pieces
        + [(p, 0.0) for p in gene_pieces]  # above any segmentation (text scores are < 0)
    )
    model = models.Unigram(pieces, unk_id=specials.index(UNK_TOKEN), byte_fallback=True)
    backend = Tokenizer(model)
    backend.pre_tokenizer = metaspace()
    backend.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement=SPACE, prepend_scheme="first")]
    )
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A $B",
        special_tokens=[(BOS_TOKEN, specials.index(BOS_TOKEN))],
    )
    tokenizer = _wrap(backend, model_max_length)
    n_genes = len(genes)
    logger.info(
        "cell tokenizer: %d tokens (%d genes, %d text pieces, 256 bytes, %d special)",
        len(tokenizer),
        n_genes,
        len(text_pieces),
        len(specials),
    )
    return _finish(tokenizer, "gene_tokens")


def _gene_list(vocab: GeneVocab | Sequence[str], extra_genes: Iterable[str]) -> list[str]:
    measured = vocab if isinstance(vocab, GeneVocab) else GeneVocab(tuple(vocab))
    genes = list(measured.genes)
    seen = {g.upper() for g in genes}
    for gene in extra_genes:
        symbol = str(gene).strip()
        if not symbol or symbol.upper() in seen:
            continue
        seen.add(symbol.upper())
        genes.append(symbol)
    GeneVocab(tuple(genes))  # same validation (no whitespace, no case collisions)
    bad = [g for g in genes if SPACE in g or g in MARKUP_TOKENS or g in ROLE_TOKENS]
    if bad:
        raise ValueError(
            f"gene symbols {bad[:5]} contain '{SPACE}' or are markup/role tokens; rename them."
        )
    return genes


# ---------------------------------------------------------------------- mode (b): added tokens
@dataclass(frozen=True)
class GeneTokenAddition:
    """Result of :func:`add_gene_tokens`.

    Attributes
    ----------
    tokenizer
        The new tokenizer (the base tokenizer is not modified).
    new_token_ids
        Ids of all added tokens (genes, markup, roles), ascending.
    token_to_text
        Added token content -> the text it stands for (``" CD3E"`` -> ``" CD3E"``,
        ``"<cell>"`` -> ``"<cell>"``), for logging and embedding initialisation.
    gene_token_ids
        Gene symbol -> its token id (genes already one base token keep that id).
    init_pieces
        New token id -> the base tokenizer's ids of the token's text: initialise that embedding
        row as the mean of the base embeddings of these ids (``model.resize_token_embeddings``
        first).
    """

    tokenizer: object
    new_token_ids: list[int]
    token_to_text: dict[str, str]
    gene_token_ids: dict[str, int]
    init_pieces: dict[int, list[int]]


def gene_token_init_pieces(base_tokenizer, genes: Iterable[str]) -> dict[str, list[int]]:
    """Base-tokenizer ids of ``" SYMBOL"`` for each gene (call BEFORE adding gene tokens)."""
    symbols = list(dict.fromkeys(str(g) for g in genes))
    encoded = base_tokenizer([" " + g for g in symbols], add_special_tokens=False)["input_ids"]
    return dict(zip(symbols, (list(ids) for ids in encoded), strict=True))


def add_gene_tokens(
    base_tokenizer,
    genes: GeneVocab | Iterable[str],
    *,
    add_markup_tokens: bool = True,
    add_role_tokens: bool = True,
) -> GeneTokenAddition:
    """A pretrained LM's tokenizer plus one token per gene (mode ``"added_gene_tokens"``).

    Each gene becomes the added token ``" SYMBOL"`` (leading space included, not normalized),
    so that ``"<cell> CD3E CD8A </cell>"`` is ``<cell>``, `` CD3E``, `` CD8A``, then the base
    tokenizer's pieces of ``" </cell>"`` (or the ``</cell>`` token). Genes whose ``" SYMBOL"`` is
    already a single base token are not added.

    Parameters
    ----------
    base_tokenizer
        A ``transformers`` fast tokenizer (not modified; a copy is returned).
    genes
        Measured genes plus perturbation targets.
    add_markup_tokens
        Add ``<cell>``, ``</cell>``, ``<pert>``... as (non-special) tokens.
    add_role_tokens
        Add the chat template's role tokens as special tokens.

    Returns
    -------
    GeneTokenAddition
        Resize the model's embeddings to ``len(result.tokenizer)`` and initialise the rows of
        ``result.new_token_ids`` from ``result.init_pieces``.
    """
    import copy

    from tokenizers import AddedToken

    symbols = list(genes.genes if isinstance(genes, GeneVocab) else dict.fromkeys(genes))
    symbols = _gene_list(symbols, ())
    tokenizer = copy.deepcopy(base_tokenizer)
    _require_fast(tokenizer)
    before = len(tokenizer)
    pieces = gene_token_init_pieces(base_tokenizer, symbols)
    to_add = [g for g in symbols if len(pieces[g]) != 1]
    gene_tokens = [AddedToken(" " + g, normalized=False, special=False) for g in to_add]
    texts: dict[str, str] = {" " + g: " " + g for g in to_add}
    added = tokenizer.add_tokens(gene_tokens)
    if add_markup_tokens:
        markup = [AddedToken(t, normalized=False, special=False) for t in MARKUP_TOKENS]
        added += tokenizer.add_tokens(markup)
        texts.update({t: t for t in MARKUP_TOKENS})
    if add_role_tokens:
        roles = [AddedToken(t, normalized=False, special=True) for t in ROLE_TOKENS]
        added += tokenizer.add_special_tokens(
            {"extra_special_tokens": roles}, replace_extra_special_tokens=False
        )
        texts.update({t: t for t in ROLE_TOKENS})
    new_ids = list(range(before, len(tokenizer)))
    if added != len(new_ids):
        logger.warning("%d tokens added but the tokenizer grew by %d", added, len(new_ids))
    vocab = tokenizer.get_vocab()
    base_vocab_size = before
    init: dict[int, list[int]] = {}
    for content, text in texts.items():
        token_id = vocab.get(content)
        if token_id is None or token_id < base_vocab_size:
            continue
        init[token_id] = base_tokenizer(text, add_special_tokens=False)["input_ids"]
    gene_ids = {g: vocab[" " + g] for g in to_add}
    gene_ids.update({g: pieces[g][0] for g in symbols if len(pieces[g]) == 1})
    _ensure_eos_and_pad(tokenizer)
    tokenizer = _finish(tokenizer, "added_gene_tokens")
    logger.info(
        "added %d gene tokens (%d genes were already single tokens), %d tokens in all",
        len(to_add),
        len(symbols) - len(to_add),
        len(new_ids),
    )
    return GeneTokenAddition(
        tokenizer=tokenizer,
        new_token_ids=sorted(init),
        token_to_text={c: t for c, t in texts.items() if vocab.get(c, -1) >= base_vocab_size},
        gene_token_ids=gene_ids,
        init_pieces=init,
    )


# ---------------------------------------------------------------------- mode (c): text
def genes_as_text_tokenizer(base_tokenizer, *, add_markup_tokens: bool = False):
    """A pretrained LM's tokenizer reading genes as plain words (mode ``"genes_as_text"``).

    For Cell2Sentence checkpoints (space-separated upper-case symbols). The vocabulary is left
    unchanged unless ``add_markup_tokens=True`` (then resize the model's embeddings); only the
    chat template is attached, a pad token set (eos when missing) and spaces kept verbatim on
    decode.
    """
    import copy

    from tokenizers import AddedToken

    tokenizer = copy.deepcopy(base_tokenizer)
    _require_fast(tokenizer)
    if add_markup_tokens:
        tokenizer.add_tokens(
            [AddedToken(t, normalized=False, special=False) for t in MARKUP_TOKENS]
        )
    _ensure_eos_and_pad(tokenizer)
    return _finish(tokenizer, "genes_as_text")


# ---------------------------------------------------------------------- shared
def _wrap(backend, model_max_length: int | None):
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=AddedToken(BOS_TOKEN, normalized=False, special=True),
        eos_token=AddedToken(EOS_TOKEN, normalized=False, special=True),
        unk_token=AddedToken(UNK_TOKEN, normalized=False, special=True),
        pad_token=AddedToken(PAD_TOKEN, normalized=False, special=True),
        extra_special_tokens=[AddedToken(t, normalized=False, special=True) for t in ROLE_TOKENS],
        clean_up_tokenization_spaces=False,
        **kwargs,
    )
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in MARKUP_TOKENS])
    return tokenizer


def _require_fast(tokenizer) -> None:
    if (
        not getattr(tokenizer, "is_fast", False)
        or getattr(tokenizer, "backend_tokenizer", None) is None
    ):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer; load the "
            "base tokenizer with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )


def _ensure_eos_and_pad(tokenizer) -> None:
    if tokenizer.eos_token is None:
        raise ValueError(
            "the base tokenizer has no eos_token; the chat template ends assistant turns with "
            "it. Set one first, e.g. tokenizer.eos_token = '<|endoftext|>'."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _finish(tokenizer, mode: str):
    tokenizer.chat_template = chat_template()
    tokenizer.clean_up_tokenization_spaces = False
    tokenizer.init_kwargs["clean_up_tokenization_spaces"] = False
    tokenizer.init_kwargs[MODE_KEY] = mode
    failures = round_trip_failures(tokenizer)
    if failures:
        logger.warning(
            "this tokenizer does not decode exactly what it encodes (e.g. %r -> %r); base "
            "tokenizers with a legacy SentencePiece normalizer add a space after special tokens. "
            "Cells still parse (words are split on whitespace), but prefer a non-legacy base "
            "(for Llama-2 tokenizers: legacy=False).",
            *failures[0],
        )
    return tokenizer


_PROBE_MESSAGES = (
    {"role": "system", "content": "You are a cell biologist."},
    {"role": "user", "content": "What happens after <pert> KLF1 </pert>? <cell> CD3E CD8A </cell>"},
    {"role": "assistant", "content": "<cell> MS4A1 CD3E\nGNLY </cell>"},
)


def round_trip_failures(tokenizer, texts: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``(text, decoded)`` pairs where ``decode(encode(text))`` differs from ``text``.

    Checks ``texts`` plus a probe chat (rendered with the tokenizer's chat template) and a bare
    cell sentence; special tokens are kept on decode.
    """
    probes = [*texts, "CD3E CD8A MS4A1", "<cell> CD3E CD8A </cell>"]
    if tokenizer.chat_template:
        probes.append(tokenizer.apply_chat_template(list(_PROBE_MESSAGES), tokenize=False))
    failures = []
    for text in probes:
        ids = tokenizer.encode(text, add_special_tokens=False)
        decoded = tokenizer.decode(ids, skip_special_tokens=False)
        if decoded != text:
            failures.append((text, decoded))
    return failures


def tokenizer_mode(tokenizer) -> str | None:
    """The cellrlhf mode a tokenizer was made with (``None`` for a plain tokenizer)."""
    mode = tokenizer.init_kwargs.get(MODE_KEY)
    return mode if mode in TOKENIZER_MODES else None


def load_cell_tokenizer(path: str | Path):
    """Load a tokenizer saved with ``save_pretrained`` and check its cellrlhf mode.

    Raises ``ValueError`` when the directory holds a tokenizer not made by this module.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path}.")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer_mode(tokenizer) is None:
        raise ValueError(
            f"{path} holds a tokenizer without a cellrlhf mode ({MODE_KEY} missing from "
            "tokenizer_config.json). Make one with build_cell_tokenizer, add_gene_tokens or "
            "genes_as_text_tokenizer and save it with save_pretrained."
        )
    return tokenizer


def markup_token_id(tokenizer, text: str, *, needed_by: str) -> int:
    """The id of a markup token (``<cell>``, ``</pert>``...), which must be a single token.

    ``needed_by`` names the feature in the error raised when it is not (e.g. a tokenizer that
    was not built by :mod:`cellrlhf.cell2text.tokenizer`).
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"{text!r} is not a single token of this tokenizer (it encodes to {ids}); {needed_by} needs the "
            "cellrlhf markup as single tokens. Build the tokenizer with cellrlhf.cell2text.tokenizer."
        )
    return int(ids[0])


def gene_token_ids(tokenizer, genes: GeneVocab | Iterable[str]) -> list[int]:
    """Token id of each gene's word ``" SYMBOL"``, or ``-1`` where it is not a single token."""
    symbols = list(genes.genes if isinstance(genes, GeneVocab) else genes)
    if not symbols:
        return []
    encoded = tokenizer([" " + g for g in symbols], add_special_tokens=False)["input_ids"]
    return [ids[0] if len(ids) == 1 else -1 for ids in encoded]
