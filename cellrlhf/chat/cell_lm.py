"""``CellLM``: talk to a saved cell language model about your cells.

::

    from cellrlhf.chat import CellLM

    lm = CellLM.from_pretrained("runs/sft")            # or a Hub id, "org/name"
    lm.annotate(adata[:100])                           # DataFrame: label, score, answer
    pred = lm.predict_perturbation(adata[:8], "KLF1")  # .adata, .top_up, .top_down
    cells = lm.generate_cells("K562", n=16)            # AnnData
    for piece in lm.chat([{"role": "user", "content": lm.cell_question(adata[0], "What is it?")}],
                         stream=True):
        print(piece, end="")

Cells can be AnnData rows, gene -> value mappings or cell sentences
(:mod:`cellrlhf.chat.cell_input`). Prompts are the ones the model was tuned on
(:mod:`cellrlhf.chat.prompts`), with the measured-evidence block of its training data when it
was trained with one (:mod:`cellrlhf.chat.prompt_evidence`). Generation is batched, seeded and runs under ``torch.no_grad``.
The perturbation tasks (predict, identify, effect) live in
:class:`~cellrlhf.chat.perturbation_tasks.PerturbationTasks`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from cellrlhf.cell2text.markup import extract_cell
from cellrlhf.chat.cell_input import EncodedCells, encode_cells
from cellrlhf.chat.perturbation_tasks import TEXT_ANSWER_TOKENS, PerturbationTasks
from cellrlhf.chat.prompt_evidence import ModelEvidence, load_model_evidence
from cellrlhf.chat.prompts import (
    TaskPrompts,
    parse_label,
)
from cellrlhf.chat.results import profiles_adata
from cellrlhf.data.layout import EVIDENCE_INDEX_FILENAME
from cellrlhf.sampling import GenerationSettings, Sampler

__all__ = ["CellLM"]

logger = logging.getLogger(__name__)

_METADATA_FILES = (
    "cellrlhf.json",
    "training_config.yaml",
    "data_manifest.json",
    "eval_results.json",
    EVIDENCE_INDEX_FILENAME,
)


class CellLM(PerturbationTasks):
    """A cell language model with its tokenizer, gene vocabulary and expression decoder.

    Build it with :meth:`from_pretrained`. The constructor takes already-loaded parts.

    Parameters
    ----------
    model, tokenizer
        A transformers causal LM and its tokenizer (with the chat template).
    vocab
        The :class:`~cellrlhf.cell2text.vocab.GeneVocab` of the training data.
    decoder
        The :class:`~cellrlhf.cell2text.decoder.ExpressionDecoder` of the training data.
    info, data_manifest
        ``cellrlhf.json`` and ``data_manifest.json`` of the model directory.
    evidence_index
        The :class:`~cellrlhf.data.evidence_index.EvidenceIndex` of the model directory
        (``evidence_index.json``): the measured evidence its training prompts showed, put into
        perturbation prompts by default (see ``predict_perturbation``'s ``evidence``).
    path
        The model directory (for :meth:`push_to_hub` and copying metadata on save).
    templates_dir
        Task templates to use instead of the packaged ones.
    constrain_cells
        Default of the methods' ``constrain_cells``: constrained decoding of generated cells
        (only measured genes, each at most once per cell, then ``</cell>``; see
        :mod:`cellrlhf.cell2text.sentence_constraints`). Needs gene tokens (a ``genes_as_text``
        model raises ``ValueError``). Off by default: the unconstrained answers show what the
        model learned.
    """

    def __init__(
        self,
        model,
        tokenizer,
        vocab,
        decoder,
        *,
        info: Mapping | None = None,
        data_manifest: Mapping | None = None,
        path: str | Path | None = None,
        templates_dir: str | Path | None = None,
        constrain_cells: bool = False,
        evidence_index=None,
    ):
        if list(decoder.vocab.genes) != list(vocab.genes):
            raise ValueError(
                "the expression decoder and the gene vocabulary list different genes; they must "
                "come from the same dataset directory."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.decoder = decoder
        self.info = dict(info or {})
        self.data_manifest = dict(data_manifest or {})
        self.path = Path(path) if path is not None else None
        self.evidence = ModelEvidence(
            evidence_index, self.data_manifest, str(self.path) if self.path else ""
        )
        self.prompts = TaskPrompts(
            context_kind=self._context_kind(),
            templates_dir=templates_dir,
            manifest=self.data_manifest,
        )
        self.generator = Sampler(model, tokenizer, cell_genes=vocab)
        self.constrain_cells = bool(constrain_cells)
        if self.constrain_cells:  # fail now, not at the first answer
            self.generator.logits_processors(GenerationSettings(constrain_cells=True))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        device_map=None,
        dtype=None,
        trust_remote_code: bool = False,
        templates_dir: str | Path | None = None,
        constrain_cells: bool = False,
    ) -> CellLM:
        """Load a saved model directory or a Hub repository (through the standard HF cache).

        Parameters
        ----------
        path_or_hub_id
            Output directory of ``cellrlhf sft`` / ``reward`` / ``ppo``, or ``"org/name"``.
        revision, token, cache_dir, local_files_only
            Hub download options (``HF_HUB_OFFLINE=1`` also keeps to the cache).
        device_map, dtype
            Placement and precision, handed to transformers / accelerate (``device_map="auto"``
            for GPUs).
        trust_remote_code
            Run code shipped with the model. Off by default; weights are always read from
            safetensors (pickle weights are refused).
        templates_dir
            Task templates the model was trained with, if not the packaged ones.
        constrain_cells
            Constrained decoding of generated cells by default (see the class).
        """
        from cellrlhf.sft.model_dir import load_model_dir
        from cellrlhf.sft.model_files import resolve_model_dir

        model_dir = resolve_model_dir(
            path_or_hub_id,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        loaded = load_model_dir(
            model_dir, device_map=device_map, dtype=dtype, trust_remote_code=trust_remote_code
        )
        return cls(
            loaded.model,
            loaded.tokenizer,
            loaded.vocab,
            loaded.decoder,
            info=loaded.info,
            data_manifest=loaded.data_manifest,
            path=loaded.path,
            templates_dir=templates_dir,
            constrain_cells=constrain_cells,
            evidence_index=load_model_evidence(loaded.path),
        )

    # ------------------------------------------------------------------ metadata
    @property
    def evidence_index(self):
        """The model's :class:`~cellrlhf.data.evidence_index.EvidenceIndex` (``None``: its
        training prompts carried no evidence, or its directory predates the file)."""
        return self.evidence.index

    def _context_kind(self) -> str:
        config = self.data_manifest.get("config")
        sft = config.get("sft") if isinstance(config, Mapping) else None
        if isinstance(sft, Mapping) and sft.get("context_noun"):
            return str(sft["context_noun"])
        return str(self.info.get("context_noun", "cell_type"))

    @property
    def stage(self) -> str:
        return str(self.info.get("stage", "unknown"))

    @property
    def genes(self) -> tuple[str, ...]:
        """The genes the model knows (vocabulary order: the columns of predicted AnnData)."""
        return self.vocab.genes

    @property
    def cell_contexts(self) -> list[str]:
        """Cell types / lines of the training data (``annotate(..., candidates=...)``)."""
        return [str(c) for c in self.data_manifest.get("cell_contexts") or []]

    @property
    def sentence_length(self) -> int | None:
        """Genes per training cell sentence (``top_k`` of the encoding), if capped."""
        top_k = self.decoder.params.get("top_k") or self.info.get("top_k")
        return int(top_k) if top_k else None

    def _sentence_budget(self) -> int:
        genes = self.sentence_length or len(self.vocab)
        per_gene = 4 if self.info.get("tokenizer_mode") == "genes_as_text" else 1
        return int(genes * per_gene + 8)

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else ""
        return (
            f"CellLM({type(self.model).__name__}, stage={self.stage!r}, {len(self.vocab)} genes"
            f"{where})"
        )

    # ------------------------------------------------------------------ cells
    def encode(
        self,
        cells,
        *,
        layer: str | None = None,
        gene_symbols: str | None = None,
        duplicates: str = "error",
    ) -> EncodedCells:
        """Cell sentences of ``cells`` in the model's vocabulary, ranked as in training."""
        return encode_cells(
            cells,
            self.vocab,
            layer=layer,
            gene_symbols=gene_symbols,
            duplicates=duplicates,
            top_k=self.sentence_length,
            seed=int(self.decoder.params.get("seed", 0) or 0),
        )

    def cell_question(self, cell, question: str, *, layer: str | None = None) -> str:
        """A user message asking ``question`` about one cell (for :meth:`chat`)."""
        encoded = self.encode(cell, layer=layer)
        if len(encoded) != 1:
            raise ValueError(f"cell_question takes one cell; got {len(encoded)}.")
        return self.prompts.question(encoded.sentences[0], question)[-1]["content"]

    # ------------------------------------------------------------------ tasks
    def annotate(
        self,
        cells,
        *,
        layer: str | None = None,
        candidates: Sequence[str] | None = None,
        batch_size: int = 16,
        progress: bool | None = None,
    ):
        """Cell type (or cell line) of each cell.

        Parameters
        ----------
        cells
            AnnData rows, a mapping, a sentence or a list of them.
        layer
            AnnData layer holding the expression (default ``X``).
        candidates
            Labels to choose from. Without them the model answers freely (greedy) and ``score``
            is the probability of its whole answer; with them every candidate's answer is scored
            and ``score`` is the candidate's share of probability (columns ``p(<label>)`` too).
        batch_size
            Prompts per forward pass.

        Returns
        -------
        :class:`pandas.DataFrame` indexed by cell id with ``label``, ``score``, ``answer``.
        """
        return self._annotate(self.encode(cells, layer=layer), candidates, batch_size, progress)

    def _annotate(self, encoded: EncodedCells, candidates, batch_size: int, progress):
        import pandas as pd

        conversations = [self.prompts.annotation(s) for s in encoded.sentences]
        show = progress if progress is not None else len(conversations) > batch_size
        if candidates:
            answers = [self.prompts.annotation_answer(c) for c in candidates]
            probs = np.zeros((len(conversations), len(answers)))
            for i, conv in enumerate(conversations):
                logp = self.generator.score_answers(conv, answers, batch_size=batch_size)
                probs[i] = np.exp(logp - logp.max())
                probs[i] /= probs[i].sum()
            best = probs.argmax(axis=1)
            table = pd.DataFrame(
                {
                    "label": [candidates[j] for j in best],
                    "score": probs[np.arange(len(best)), best],
                    "answer": [answers[j] for j in best],
                },
                index=pd.Index(encoded.ids, name="cell"),
            )
            for j, label in enumerate(candidates):
                table[f"p({label})"] = probs[:, j]
            return table
        settings = GenerationSettings(max_new_tokens=TEXT_ANSWER_TOKENS, temperature=0.0)
        completions = self.generator.generate(
            conversations,
            settings,
            batch_size=batch_size,
            progress=show,
            desc="annotate",
            logprobs=True,
        )
        return pd.DataFrame(
            {
                "label": [parse_label(c.text) for c in completions],
                "score": [float(np.exp(c.logprob)) if c.finished else 0.0 for c in completions],
                "answer": [c.text for c in completions],
            },
            index=pd.Index(encoded.ids, name="cell"),
        )

    def generate_cells(
        self,
        cell_type: str,
        n: int = 1,
        *,
        temperature: float = 1.0,
        seed: int = 0,
        max_new_tokens: int | None = None,
        batch_size: int = 16,
        progress: bool | None = None,
        constrain_cells: bool | None = None,
    ):
        """Sample ``n`` cells of ``cell_type`` (or cell line): an AnnData of decoded profiles
        with ``obs`` ``cell_type``, ``cell_sentence``, ``valid_fraction``, ``n_genes``.
        ``constrain_cells``: constrained decoding (default: the model's ``constrain_cells``)."""
        if n < 1:
            raise ValueError(f"n={n} must be >= 1.")
        settings = GenerationSettings(
            max_new_tokens=max_new_tokens or self._sentence_budget(),
            temperature=temperature,
            seed=seed,
            constrain_cells=self._constrained(constrain_cells),
        )
        conversations = [self.prompts.generation(cell_type)] * n
        show = progress if progress is not None else n > batch_size
        completions = self.generator.generate(
            conversations, settings, batch_size=batch_size, progress=show, desc="generate"
        )
        answers = [c.text for c in completions]
        matrix, report = self.decoder.decode(answers)
        obs = {
            "cell_type": cell_type,
            "cell_sentence": [extract_cell(a).sentence for a in answers],
            "valid_fraction": report.valid_fractions,
            "n_genes": report.n_valid,
            "closed": report.closed,
            "index": [f"generated_{i}" for i in range(n)],
        }
        params = {
            "cell_type": cell_type,
            "temperature": temperature,
            "seed": seed,
            "constrain_cells": settings.constrain_cells,
        }
        adata = profiles_adata(
            matrix, self.vocab.genes, obs, uns={"cellrlhf_generation": {"params": params}}
        )
        adata.obs = adata.obs.set_index("index")
        adata.obs.index.name = None
        return adata

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        stream: bool = False,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        constrain_cells: bool | None = None,
    ) -> str | Iterator[str]:
        """Answer a conversation (``[{"role": "user", "content": ...}, ...]``).

        A conversation without a system message gets the system prompt of training. Use
        :meth:`cell_question` to put a cell in a message. With ``stream=True`` an iterator of
        text pieces is returned (words arrive whole). ``constrain_cells``: constrained decoding
        of cells in the answer (default: the model's ``constrain_cells``).
        """
        conversation = [dict(m) for m in messages]
        for m in conversation:
            if m.get("role") not in {"system", "user", "assistant"} or not isinstance(
                m.get("content"), str
            ):
                raise ValueError(
                    "messages must be dicts with role system/user/assistant and text content; "
                    f"got {m!r}."
                )
        if not conversation or conversation[0]["role"] != "system":
            conversation.insert(0, {"role": "system", "content": self.prompts.chat_system})
        settings = GenerationSettings(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            constrain_cells=self._constrained(constrain_cells),
        )
        if stream:
            return self.generator.stream(conversation, settings)
        return self.generator.generate([conversation], settings)[0].text

    # ------------------------------------------------------------------ helpers
    def _constrained(self, given: bool | None) -> bool:
        return self.constrain_cells if given is None else bool(given)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write a complete model directory (safetensors weights, tokenizer and chat template,
        cell2text files, and the metadata files of the directory it was loaded from)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory), safe_serialization=True)
        self.tokenizer.save_pretrained(str(directory))
        self.vocab.save(directory)
        self.decoder.save(directory)
        if self.path is not None and self.path.resolve() != directory.resolve():
            for name in _METADATA_FILES:
                if (self.path / name).is_file():
                    shutil.copyfile(self.path / name, directory / name)
        if self.evidence_index is not None:  # also for a model built in memory
            self.evidence_index.save(directory / EVIDENCE_INDEX_FILENAME)
        return directory

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool = False,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str = "Upload cellrlhf model",
        create_pr: bool = False,
        eval_results=(),
        license: str | None = None,
    ):
        """Share the model on the Hub (see :func:`cellrlhf.hub.push.push_model`).

        The directory it was loaded from is uploaded as it is; a model built in memory is
        saved to a temporary directory first.
        """
        from cellrlhf.hub.push import push_model

        kwargs = dict(
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
            eval_results=eval_results,
            license=license,
        )
        if self.path is not None:
            return push_model(self.path, repo_id, **kwargs)
        with tempfile.TemporaryDirectory(prefix="cellrlhf-save-") as tmp:
            return push_model(self.save_pretrained(tmp), repo_id, **kwargs)
