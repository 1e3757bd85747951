"""Cell sentences of expression blocks, written exactly as ``cellrlhf.cell2text`` writes them.

The data stage encodes with cell2text's own :class:`~cellrlhf.cell2text.encoding.SentenceEncoder`
(ranking, tie-breaking, numba sentence writer), so a sentence in a built dataset is
byte-identical to ``cell2text.encode`` on the same cell with the same ``top_k`` and ``seed``, and
the expression decoder fitted here reads them the same way.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["SentenceWriter"]


class SentenceWriter:
    """Turns expression rows (already in vocabulary gene order) into cell sentences.

    Parameters
    ----------
    vocab
        The :class:`~cellrlhf.cell2text.vocab.GeneVocab` of the expression columns.
    top_k
        Genes per sentence (None = every expressed gene).
    seed
        Tie-breaking seed of the ranking.
    """

    def __init__(self, vocab, *, top_k: int | None = None, seed: int = 0):
        from cellrlhf.cell2text.encoding import SentenceEncoder
        from cellrlhf.cell2text.vocab import GeneMapping

        self.vocab = vocab
        self.top_k = top_k
        self.seed = seed
        identity = GeneMapping(np.arange(len(vocab), dtype=np.int64), len(vocab))
        self._identity = identity
        self._encoder = SentenceEncoder(vocab, identity, top_k=top_k, seed=seed)

    def encode(self, values: sp.csr_matrix, cell_ids, *, layer_name: str = "X"):
        """Sentences (Arrow string column) and gene counts of the rows of ``values``.

        Raises ``ValueError`` naming ``layer_name`` for NaN, infinite or negative values.
        """
        self._encoder.layer_name = layer_name
        encoded = self._encoder(values, list(cell_ids))
        return encoded.sentences, encoded.n_genes

    def encode_profile(self, profile: np.ndarray, name: str, top_k: int | None) -> str:
        """Sentence of one expression profile (a pseudo-bulk), named ``name`` for tie-breaking."""
        from cellrlhf.cell2text.encoding import SentenceEncoder

        row = sp.csr_matrix(np.asarray(profile, dtype=np.float32).reshape(1, -1))
        row.eliminate_zeros()
        encoder = SentenceEncoder(self.vocab, self._identity, top_k=top_k, seed=self.seed)
        return encoder(row, [name]).sentences.to_pylist()[0]
