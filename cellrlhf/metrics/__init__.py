"""Statistics shared by every stage: one definition of each, whichever stage reports it.

The data, reward, evaluation and RL stages import from here, never from each other, for
statistics. This package sits at the bottom of the import graph: it imports numpy, scipy and
pandas, never another ``cellrlhf`` package.

Modules
-------
:mod:`cellrlhf.metrics.pseudobulk`
    Per-group counts, sums, means and variances (pseudo-bulks), at once or streamed.
:mod:`cellrlhf.metrics.de`
    Differential expression (Wilcoxon rank-sum or Welch, Benjamini-Hochberg) and top DE genes.
:mod:`cellrlhf.metrics.de_overlap`
    DE-gene metrics of a prediction against real cells (``overlap_at_N`` and friends).
:mod:`cellrlhf.metrics.fidelity`
    Pearson correlation of changes from control, specific changes, top-k variants, MAE/MSE.
:mod:`cellrlhf.metrics.intervals`
    Intervals over perturbations (bootstrap, Student t).
:mod:`cellrlhf.metrics.sampling_noise`
    Split-half reliability of a sampled prediction (are there enough cells?); Spearman-Brown.

Import names from the module that defines them (``from cellrlhf.metrics.de import
differential_expression``); ``from cellrlhf.metrics import *`` imports the modules.
"""

__all__ = ["de", "de_overlap", "fidelity", "intervals", "pseudobulk", "sampling_noise"]
