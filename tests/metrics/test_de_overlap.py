import numpy as np
import pytest

from cellrlhf.metrics.de import DEResult
from cellrlhf.metrics.de_overlap import (
    direction_match,
    overlap_at_n,
    precision_at_n,
    sig_genes_recall,
    signed_overlap_at_n,
)


def _de(lfc, fdr):
    lfc = np.asarray(lfc, dtype=np.float32)
    fdr = np.asarray(fdr, dtype=float)
    return DEResult(
        statistic=np.zeros(lfc.size),
        pvalue=fdr,
        padj=fdr,
        effect=lfc.astype(float),
        log2_fold_change=lfc,
        method="wilcoxon",
        n_perturbed=3,
        n_control=3,
    )


def test_overlap_metrics_hand_computed():
    # real significant genes by |lfc|: 0 (4), 2 (-3), 3 (2); gene 1 not significant
    real = _de([4.0, 9.0, -3.0, 2.0, 0.5], [0.01, 0.5, 0.01, 0.01, 0.9])
    # predicted significant by |lfc|: 2 (+5), 4 (3), 0 (1)
    pred = _de([1.0, 0.0, 5.0, 0.1, 3.0], [0.01, 0.9, 0.01, 0.9, 0.01])
    assert real.ranked_significant().tolist() == [0, 2, 3]
    assert pred.ranked_significant().tolist() == [2, 4, 0]
    assert overlap_at_n(real, pred) == pytest.approx(2 / 3)  # {0,2,3} & {2,4,0}
    assert overlap_at_n(real, pred, k=1) == 0.0  # {0} vs {2}
    assert overlap_at_n(real, pred, k=2) == pytest.approx(1 / 2)  # {0,2} & {2,4}
    assert precision_at_n(real, pred) == pytest.approx(2 / 3)
    # gene 2 goes down in real, up in prediction: only gene 0 counts
    assert signed_overlap_at_n(real, pred) == pytest.approx(1 / 3)
    # real significant 0, 2, 3: signs (+, -, +) vs predicted (+, +, +)
    assert direction_match(real, pred) == pytest.approx(2 / 3)
    assert sig_genes_recall(real, pred) == pytest.approx(2 / 3)


def test_overlap_without_significant_genes():
    none = _de([1.0, 2.0], [0.5, 0.5])
    some = _de([1.0, 2.0], [0.01, 0.01])
    assert overlap_at_n(none, some) == 0.0
    assert overlap_at_n(some, none) == 0.0
    assert np.isnan(direction_match(none, some))
    assert np.isnan(sig_genes_recall(none, some))


def test_ties_in_fold_change_keep_gene_order():
    de = _de([2.0, -2.0, 2.0], [0.01, 0.01, 0.01])
    assert de.ranked_significant().tolist() == [0, 1, 2]
