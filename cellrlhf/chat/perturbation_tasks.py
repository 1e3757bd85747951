"""The perturbation tasks of :class:`~cellrlhf.chat.cell_lm.CellLM`: predict a perturbed
profile, identify a cell's perturbation, state a perturbation's effect.

:class:`PerturbationTasks` is a mixin of ``CellLM``: it uses the model's ``prompts``,
``generator`` (:class:`~cellrlhf.sampling.Sampler`), ``vocab``, ``decoder``, ``info``,
``data_manifest``, ``tokenizer``, ``evidence`` (:class:`~cellrlhf.chat.prompt_evidence.
ModelEvidence`) and its ``encode`` / ``_annotate`` / ``_sentence_budget`` / ``_constrained``
methods. Perturbation targets are written as the model's words
(:meth:`PerturbationTasks.has_word`), unknown ones as ``<unk_pert>``. Prediction and effect
prompts start with the measured-evidence block when the model was trained with one
(:mod:`cellrlhf.chat.prompt_evidence`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from cellrlhf.cell2text.markup import extract_cell, split_perturbation
from cellrlhf.chat.cell_input import EncodedCells
from cellrlhf.chat.prompts import CONTROL_WORDS, parse_effect, parse_perturbation
from cellrlhf.chat.results import PerturbationPrediction, profiles_adata, top_changed_genes
from cellrlhf.sampling import GenerationSettings

__all__ = ["TEXT_ANSWER_TOKENS", "PerturbationTasks"]

logger = logging.getLogger(__name__)

# token budget of a text answer (a label, a perturbation name)
TEXT_ANSWER_TOKENS = 48


class PerturbationTasks:
    """Perturbation prediction, identification and effect questions (a ``CellLM`` mixin)."""

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
    def blind_targets(self) -> set[str]:
        """Upper-cased targets the model knows by name only: held out of its training data
        (test and validation singles of an ``unseen_single`` split) and not measured genes, so
        neither SFT nor pretraining ever showed it what they do."""
        split = self.data_manifest.get("split") or {}
        if split.get("kind") != "unseen_single":
            return set()
        held = [*(split.get("test_targets") or []), *(split.get("validation_perturbations") or [])]
        unmeasured = {
            str(t).upper() for t in self.data_manifest.get("perturbation_targets_unmeasured") or []
        }
        return {str(t).upper() for t in held} & unmeasured

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
        evidence=None,
        gene_table=None,
    ) -> PerturbationPrediction:
        """Predict each cell's profile after ``perturbation``.

        Parameters
        ----------
        cells
            Control (unperturbed) cells: AnnData rows, mappings or sentences.
        perturbation
            Targets as ``"KLF1"``, ``"KLF1+CEBPA"`` or ``["KLF1", "CEBPA"]``; ``"control"`` asks
            for an unperturbed cell. Targets the model has no word for are written
            ``<unk_pert>`` (logged); targets it knows by name only
            (:attr:`blind_targets`) are logged too.
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
        evidence
            The measured-evidence block put before the prompt, as in training. ``None``: the
            model's own (its ``evidence_index.json``; no block for a model trained without
            evidence); ``False``: no block; an :class:`~cellrlhf.data.evidence_index.
            EvidenceIndex` or a dataset directory built with an ``evidence:`` section: that
            evidence (e.g. your own measurements). A perturbation nothing was measured for gets
            the "not measured" lines; a combination, its measured components' lines.
        gene_table
            The gene-similarity table of ``neighbours`` evidence (a path or a
            :class:`~cellrlhf.data.evidence_table.GeneTable`); default: the one the evidence
            was built with, if its recorded path still holds it.

        Returns
        -------
        :class:`~cellrlhf.chat.results.PerturbationPrediction`.
        """
        chosen = self.evidence.choose(evidence, gene_table)
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
        by_name = self.blind_targets
        blind = [t for t in targets if t not in unknown and t.upper() in by_name]
        if blind:
            logger.warning(
                "target(s) %s were held out of this model's training data and are not measured "
                "genes: the model knows them by name only and predicts an average response.",
                ", ".join(blind),
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
            if chosen is not None:
                conv = chosen.messages(conv, targets, ctx)
            for k in range(n_samples):
                conversations.append(conv)
                rows.append((i, k))
        show = progress if progress is not None else len(conversations) > batch_size
        completions = self.generator.generate(
            conversations, settings, batch_size=batch_size, progress=show, desc="predict"
        )
        label = "+".join(targets) if targets else "control"
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
            "evidence": chosen.origin if chosen is not None else "none",
        }
        return self._perturbation_prediction(encoded, contexts, rows, completions, params, top_n)

    def _perturbation_prediction(
        self, encoded: EncodedCells, contexts, rows, completions, params: dict, top_n: int
    ) -> PerturbationPrediction:
        """The decoded answers as a prediction; ``rows[j]`` is answer ``j``'s (cell, sample)."""
        answers = [c.text for c in completions]
        predicted, report = self.decoder.decode(answers)
        control_all, _ = self.decoder.decode(encoded.sentences)
        control = control_all[[i for i, _ in rows]]
        mean_pred = np.asarray(predicted.mean(axis=0)).ravel()
        mean_ctrl = np.asarray(control_all.mean(axis=0)).ravel()
        top_up, top_down = top_changed_genes(mean_pred, mean_ctrl, self.vocab.genes, n=top_n)
        obs = {
            "input_cell": [encoded.ids[i] for i, _ in rows],
            "sample": [k for _, k in rows],
            "perturbation": params["perturbation"],
            "cell_context": [contexts[i] for i, _ in rows],
            "predicted_sentence": [extract_cell(a).sentence for a in answers],
            "input_sentence": [encoded.sentences[i] for i, _ in rows],
            "valid_fraction": report.valid_fractions,
            "n_genes": report.n_valid,
            "closed": report.closed,
            "finished": [c.finished for c in completions],
        }
        index = [
            f"{encoded.ids[i]}-{k}" if params["n_samples"] > 1 else encoded.ids[i] for i, k in rows
        ]
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
            GenerationSettings(max_new_tokens=TEXT_ANSWER_TOKENS),
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
        evidence=None,
        gene_table=None,
    ) -> dict:
        """Genes the model says go up and down: ``{"up": [...], "down": [...], "answer": str}``
        (``up`` / ``down`` are ``None`` when the answer could not be parsed). ``evidence`` and
        ``gene_table`` as in :meth:`predict_perturbation`."""
        chosen = self.evidence.choose(evidence, gene_table)
        targets = self._targets(perturbation)
        conv = self.prompts.perturbation_effect(
            targets,
            cell_context=cell_context,
            perturbation_type=self._perturbation_type(perturbation_type),
            known={t.upper() for t in targets if self.has_word(t)},
        )
        if chosen is not None:
            conv = chosen.messages(conv, targets, cell_context)
        (completion,) = self.generator.generate(
            [conv], GenerationSettings(max_new_tokens=max_new_tokens)
        )
        parsed = parse_effect(completion.text, empty_word=self.prompts.empty_list_word)
        up, down = parsed if parsed is not None else (None, None)
        return {"up": up, "down": down, "answer": completion.text}

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
