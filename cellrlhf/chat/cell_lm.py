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
(:mod:`cellrlhf.chat.prompts`). Generation is batched, seeded and runs under ``torch.no_grad``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from cellrlhf.cell2text.markup import extract_cell, split_perturbation
from cellrlhf.chat.cell_input import EncodedCells, encode_cells
from cellrlhf.chat.prompts import (
    CONTROL_WORDS,
    TaskPrompts,
    parse_effect,
    parse_label,
    parse_perturbation,
)
from cellrlhf.chat.results import PerturbationPrediction, profiles_adata, top_changed_genes
from cellrlhf.sampling import GenerationSettings, Sampler

__all__ = ["CellLM"]

logger = logging.getLogger(__name__)

_METADATA_FILES = (
    "cellrlhf.json",
    "training_config.yaml",
    "data_manifest.json",
    "eval_results.json",
)
_TEXT_ANSWER_TOKENS = 48


class CellLM:
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
        )

    # ------------------------------------------------------------------ metadata
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
    def known_targets(self) -> set[str]:
        """Upper-cased perturbation targets the model has a word for: the measured genes and the
        training data's targets (others are written ``<unk_pert>``)."""
        listed = [
            *(self.data_manifest.get("perturbation_targets") or []),
            *(self.info.get("perturbation_targets") or []),
        ]
        return {g.upper() for g in self.vocab.genes} | {str(t).upper() for t in listed}

    @property
    def cell_contexts(self) -> list[str]:
        """Cell types / lines of the training data (``annotate(..., candidates=...)``)."""
        return [str(c) for c in self.data_manifest.get("cell_contexts") or []]

    def has_word(self, target: str) -> bool:
        """Whether ``target`` can be written as itself in a prompt (else ``<unk_pert>``).

        With gene tokens, a target needs its own token (measured genes and the training data's
        perturbation targets have one); with genes as text, it must be a gene or target of the
        training data.
        """
        if self.info.get("tokenizer_mode", "gene_tokens") in ("gene_tokens", "added_gene_tokens"):
            from cellrlhf.cell2text.tokenizer import gene_token_ids

            return gene_token_ids(self.tokenizer, [target])[0] != -1
        return target.upper() in self.known_targets

    def _default_perturbation_type(self) -> str | None:
        """The training data's perturbation type: the most common one the manifest lists, or
        the constant of its schema (``perturbation_type: {value: CRISPRa}``)."""
        for key in ("perturbation_types", "perturbation_type"):
            value = self.data_manifest.get(key)
            if isinstance(value, Mapping) and value:
                return str(max(value, key=lambda k: value[k]))
            if isinstance(value, list) and value:
                return str(value[0])
            if isinstance(value, str) and value:
                return value
        spec = self._perturbation_type_source()
        if isinstance(spec, Mapping) and spec.get("value"):
            return str(spec["value"])
        return None

    def _perturbation_type_source(self):
        """The data config's ``schema.columns.perturbation_type``: an obs column name, a
        ``{value: ...}`` constant, or ``None``."""
        config = self.data_manifest.get("config")
        schema = config.get("schema") if isinstance(config, Mapping) else None
        columns = schema.get("columns") if isinstance(schema, Mapping) else None
        return columns.get("perturbation_type") if isinstance(columns, Mapping) else None

    def _perturbation_type(self, given: str | None) -> str | None:
        ptype = given or self._default_perturbation_type()
        column = self._perturbation_type_source()
        if ptype is None and isinstance(column, str):
            logger.info(
                "the training data took perturbation types from obs[%r], but this model's data "
                "manifest predates the recorded type counts; the prompt says 'perturbation of'. "
                "Pass perturbation_type= (type=... in the chat) for the type's own wording.",
                column,
            )
        elif ptype is None:
            logger.warning(
                "the perturbation type is not given and the model's data manifest does not say "
                "it; the prompt says 'perturbation of'. Pass perturbation_type= (CRISPRa, "
                "CRISPRi, knockout, drug, ...) as in the training data."
            )
        return ptype

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
        settings = GenerationSettings(max_new_tokens=_TEXT_ANSWER_TOKENS, temperature=0.0)
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

    def predict_perturbation(
        self,
        cells,
        perturbation: str | Sequence[str],
        *,
        cell_context: str | Sequence[str] | None = None,
        perturbation_type: str | None = None,
        layer: str | None = None,
        n_samples: int = 1,
        temperature: float | None = None,
        seed: int = 0,
        top_n: int = 20,
        max_new_tokens: int | None = None,
        batch_size: int = 16,
        progress: bool | None = None,
        constrain_cells: bool | None = None,
    ) -> PerturbationPrediction:
        """Predict each cell's profile after ``perturbation``.

        Parameters
        ----------
        cells
            Control (unperturbed) cells: AnnData rows, mappings or sentences.
        perturbation
            Targets as ``"KLF1"``, ``"KLF1+CEBPA"`` or ``["KLF1", "CEBPA"]``; ``"control"`` asks
            for an unperturbed cell. Targets the model has no word for are written
            ``<unk_pert>`` (logged).
        cell_context
            Cell type / line of the cells (one for all, or one per cell). ``None``: the model
            annotates each cell first.
        perturbation_type
            ``CRISPRa``, ``CRISPRi``, ``knockout``, ``drug``... (the phrase of the prompt).
            Default: the most common type of the training data.
        n_samples
            Predicted cells per input cell.
        temperature
            Sampling temperature; default ``0`` (greedy) for one sample, ``1`` for several.
        seed
            Sampling seed.
        top_n
            Genes listed in ``top_up`` / ``top_down``.
        constrain_cells
            Constrained decoding of the predicted cells (default: the model's
            ``constrain_cells``).

        Returns
        -------
        :class:`~cellrlhf.chat.results.PerturbationPrediction`.
        """
        targets = self._targets(perturbation)
        encoded = self.encode(cells, layer=layer)
        contexts = self._contexts(cell_context, encoded, batch_size)
        ptype = self._perturbation_type(perturbation_type)
        unknown = [t for t in targets if not self.has_word(t)]
        known = {t.upper() for t in targets if t not in unknown}
        if unknown:
            logger.warning(
                "the model has no word for target(s) %s: they are written <unk_pert> and the "
                "model predicts a generic response.",
                ", ".join(unknown),
            )
        if n_samples < 1:
            raise ValueError(f"n_samples={n_samples} must be >= 1.")
        temp = (0.0 if n_samples == 1 else 1.0) if temperature is None else float(temperature)
        settings = GenerationSettings(
            max_new_tokens=max_new_tokens or self._sentence_budget(),
            temperature=temp,
            seed=seed,
            constrain_cells=self._constrained(constrain_cells),
        )
        conversations, rows = [], []
        for i, (sentence, ctx) in enumerate(zip(encoded.sentences, contexts, strict=True)):
            conv = self.prompts.perturbation_response(
                sentence, targets, cell_context=ctx, perturbation_type=ptype, known=known
            )
            for k in range(n_samples):
                conversations.append(conv)
                rows.append((i, k))
        show = progress if progress is not None else len(conversations) > batch_size
        completions = self.generator.generate(
            conversations, settings, batch_size=batch_size, progress=show, desc="predict"
        )
        answers = [c.text for c in completions]
        predicted, report = self.decoder.decode(answers)
        control_all, _ = self.decoder.decode(encoded.sentences)
        control = control_all[[i for i, _ in rows]]
        label = "+".join(targets) if targets else "control"
        mean_pred = np.asarray(predicted.mean(axis=0)).ravel()
        mean_ctrl = np.asarray(control_all.mean(axis=0)).ravel()
        top_up, top_down = top_changed_genes(mean_pred, mean_ctrl, self.vocab.genes, n=top_n)
        obs = {
            "input_cell": [encoded.ids[i] for i, _ in rows],
            "sample": [k for _, k in rows],
            "perturbation": label,
            "cell_context": [contexts[i] for i, _ in rows],
            "predicted_sentence": [extract_cell(a).sentence for a in answers],
            "input_sentence": [encoded.sentences[i] for i, _ in rows],
            "valid_fraction": report.valid_fractions,
            "n_genes": report.n_valid,
            "closed": report.closed,
            "finished": [c.finished for c in completions],
        }
        index = [f"{encoded.ids[i]}-{k}" if n_samples > 1 else encoded.ids[i] for i, k in rows]
        params = {
            "perturbation": label,
            "targets": list(targets),
            "unknown_targets": unknown,
            "perturbation_type": ptype or "",
            "n_samples": n_samples,
            "temperature": temp,
            "seed": seed,
            "constrain_cells": settings.constrain_cells,
            "model": str(self.path) if self.path else "",
            "stage": self.stage,
            "control": "input cells, encoded and decoded with the model's decoder",
        }
        adata = profiles_adata(
            predicted,
            self.vocab.genes,
            {**obs, "index": index},
            uns={"cellrlhf_prediction": {"params": params}},
            layers={"control": control},
        )
        adata.obs = adata.obs.set_index("index")
        adata.obs.index.name = None
        adata.var["mean_predicted"] = mean_pred
        adata.var["mean_control"] = mean_ctrl
        adata.var["delta"] = mean_pred - mean_ctrl
        return PerturbationPrediction(adata, top_up, top_down, answers=answers, report=report)

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

    def identify_perturbation(
        self,
        cells,
        *,
        cell_context: str | Sequence[str] | None = None,
        perturbation_type: str | None = None,
        layer: str | None = None,
        batch_size: int = 16,
    ):
        """Which perturbation each cell received: DataFrame ``perturbation`` (``"A+B"`` or
        ``"control"``), ``score`` (probability of the answer), ``answer``."""
        import pandas as pd

        encoded = self.encode(cells, layer=layer)
        contexts = self._contexts(cell_context, encoded, batch_size)
        ptype = self._perturbation_type(perturbation_type)
        conversations = [
            self.prompts.perturbation_identification(s, cell_context=c, perturbation_type=ptype)
            for s, c in zip(encoded.sentences, contexts, strict=True)
        ]
        completions = self.generator.generate(
            conversations,
            GenerationSettings(max_new_tokens=_TEXT_ANSWER_TOKENS),
            batch_size=batch_size,
            logprobs=True,
        )
        return pd.DataFrame(
            {
                "perturbation": [parse_perturbation(c.text).label for c in completions],
                "score": [float(np.exp(c.logprob)) if c.finished else 0.0 for c in completions],
                "answer": [c.text for c in completions],
            },
            index=pd.Index(encoded.ids, name="cell"),
        )

    def perturbation_effect(
        self,
        perturbation: str | Sequence[str],
        *,
        cell_context: str,
        perturbation_type: str | None = None,
        max_new_tokens: int = 256,
    ) -> dict:
        """Genes the model says go up and down: ``{"up": [...], "down": [...], "answer": str}``
        (``up`` / ``down`` are ``None`` when the answer could not be parsed)."""
        targets = self._targets(perturbation)
        conv = self.prompts.perturbation_effect(
            targets,
            cell_context=cell_context,
            perturbation_type=self._perturbation_type(perturbation_type),
            known={t.upper() for t in targets if self.has_word(t)},
        )
        (completion,) = self.generator.generate(
            [conv], GenerationSettings(max_new_tokens=max_new_tokens)
        )
        parsed = parse_effect(completion.text, empty_word=self.prompts.empty_list_word)
        up, down = parsed if parsed is not None else (None, None)
        return {"up": up, "down": down, "answer": completion.text}

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

    def _targets(self, perturbation: str | Sequence[str]) -> list[str]:
        if isinstance(perturbation, str):
            if perturbation.strip().lower() in CONTROL_WORDS:
                return []
            targets = split_perturbation(perturbation)
        else:
            targets = [str(t).strip() for t in perturbation if str(t).strip()]
        if not targets:
            raise ValueError(
                f"no perturbation target in {perturbation!r}; write targets as 'KLF1' or "
                "'KLF1+CEBPA', or 'control'."
            )
        return [self.vocab.canonical(t) if t in self.vocab else t for t in targets]

    def _contexts(self, cell_context, encoded: EncodedCells, batch_size: int) -> list[str]:
        n = len(encoded)
        if cell_context is None:
            labels = self._annotate(encoded, None, batch_size, False)["label"]
            logger.info(
                "cell context not given; the model annotated the cells: %s",
                dict(labels.value_counts()),
            )
            return [str(v) for v in labels]
        if isinstance(cell_context, str):
            return [cell_context] * n
        contexts = [str(c) for c in cell_context]
        if len(contexts) != n:
            raise ValueError(f"{len(contexts)} cell contexts for {n} cells.")
        return contexts

    # ------------------------------------------------------------------ saving / sharing
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
