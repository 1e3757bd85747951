"""What answers and rewards are computed from, after the pass: DE genes of a perturbed group
against its controls, pseudo-bulk control sentences, and decoded control pseudo-bulks.
Each is computed once per group and cached.
"""

from __future__ import annotations

import numpy as np

from cellrlhf.metrics.de import differential_expression, top_de_genes

__all__ = ["References"]


class References:
    """Cached per-group references.

    Parameters
    ----------
    scan
        The :class:`~cellrlhf.data.scan.ScanResult`.
    groups
        The :class:`~cellrlhf.data.plan.GroupIndex`.
    vocab
        The gene vocabulary.
    de_config
        :class:`~cellrlhf.data.config.DEConfig`.
    sentence_writer
        :class:`~cellrlhf.data.sentences.SentenceWriter` (pseudo-bulk sentences).
    sentence_config
        :class:`~cellrlhf.data.config.SentenceConfig` (pseudo-bulk length).
    decoder
        The fitted :class:`~cellrlhf.cell2text.decoder.ExpressionDecoder`.
    """

    def __init__(self, scan, groups, vocab, de_config, sentence_writer, sentence_config, decoder):
        self.scan = scan
        self.groups = groups
        self.vocab = vocab
        self.de_config = de_config
        self.sentence_writer = sentence_writer
        self.sentence_config = sentence_config
        self.decoder = decoder
        self._de: dict[tuple[int, int], tuple[list[str], list[str]]] = {}
        self._pseudobulk: dict[int, str] = {}
        self._decoded: dict[int, np.ndarray] = {}

    def members(self, group: int) -> np.ndarray:
        return np.flatnonzero(self.groups.of_cell == group)

    def mean(self, group: int) -> np.ndarray:
        """Pseudo-bulk (mean transformed expression) of a group, vocabulary order."""
        return self.scan.sums.mean(group)

    def de_genes(self, group: int, control_group: int) -> tuple[list[str], list[str]]:
        """Top DE genes up and down, ``group`` against ``control_group``."""
        key = (group, control_group)
        if key not in self._de:
            config = self.de_config
            matrices = {}
            if config.method == "wilcoxon":
                matrices = {
                    "perturbed_matrix": self.scan.wilcoxon_matrix(self.members(group)),
                    "control_matrix": self.scan.wilcoxon_matrix(self.members(control_group)),
                }
            result = differential_expression(
                self.scan.sums.stats(group),
                self.scan.sums.stats(control_group),
                method=config.method,
                **matrices,
            )
            self._de[key] = top_de_genes(
                result,
                self.vocab.genes,
                n_top=config.n_top,
                alpha=config.alpha,
                min_abs_effect=config.min_abs_effect,
            )
        return self._de[key]

    def pseudobulk_sentence(self, control_group: int) -> str:
        """Sentence of a control group's pseudo-bulk, as long as a typical control cell."""
        if control_group not in self._pseudobulk:
            split, _, context = self.groups.keys[control_group]
            self._pseudobulk[control_group] = self.profile_sentence(
                self.mean(control_group),
                f"pseudobulk:{split}:{context}",
                self.scan.n_genes[self.members(control_group)],
            )
        return self._pseudobulk[control_group]

    def profile_sentence(self, profile: np.ndarray, name: str, lengths: np.ndarray) -> str:
        """Sentence of a pseudo-bulk ``profile``, as long as a typical one of the cells it
        averages (``lengths``: their numbers of expressed genes) unless
        ``sentences.pseudobulk_top_k`` is set; never longer than ``sentences.top_k``.
        ``name`` seeds the tie-breaking."""
        top_k = self.sentence_config.pseudobulk_top_k
        if top_k is None:
            top_k = max(1, int(np.median(lengths))) if len(lengths) else 1
        if self.sentence_config.top_k is not None:
            top_k = min(top_k, self.sentence_config.top_k)
        return self.sentence_writer.encode_profile(profile, name, top_k)

    def decoded_control(self, control_group: int, cells: np.ndarray) -> np.ndarray:
        """Mean of the decoded sentences of ``cells`` (a sample of ``control_group``)."""
        if control_group not in self._decoded:
            sentences = [self.scan.sentences[int(c)] for c in cells]
            matrix, _ = self.decoder.decode(sentences)
            self._decoded[control_group] = np.asarray(matrix.mean(axis=0)).ravel()
        return self._decoded[control_group]
