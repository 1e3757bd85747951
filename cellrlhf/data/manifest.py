"""The dataset manifest: what was built, from what, how, and its fingerprint.

The fingerprint is a sha256 over everything that determines the content - the config (without
output location and progress settings), the source's sha256, the template files, the content
hashes of every dataset part, the vocabulary, the decoder and the split manifest - so two builds
of the same source and config have the same fingerprint, in any process.
"""

from __future__ import annotations

import numpy as np

from cellrlhf.data.fingerprint import hash_json
from cellrlhf.data.layout import MANIFEST_FORMAT, SPLITS_FILENAME
from cellrlhf.data.schema import perturbation_targets

__all__ = ["MANIFEST_VERSION", "NON_CONTENT_KEYS", "make_manifest"]

MANIFEST_VERSION = 1
NON_CONTENT_KEYS = ("output", "progress")


def make_manifest(
    *,
    config,
    source,
    vocab,
    decoder,
    assignment,
    table,
    templates,
    phrases,
    part_hashes: dict,
    counts: dict,
    splits_payload: dict,
    leakage: dict,
    n_genes: np.ndarray,
    rl_skipped: list,
) -> dict:
    """The ``manifest.json`` payload (see :mod:`cellrlhf.data.layout`)."""
    from cellrlhf import __version__

    splits_sha = hash_json(splits_payload)
    content = {
        "config": {k: v for k, v in config.to_dict().items() if k not in NON_CONTENT_KEYS},
        "source_sha256": source.sha256,
        "templates": {name: t.sha256 for name, t in templates.items()},
        "phrases": phrases.sha256,
        "parts": part_hashes,
        "vocab": list(vocab.genes),
        "decoder": hash_json(decoder.to_dict()),
        "splits": splits_sha,
    }
    targets = sorted(
        {t for p in set(table.perts.tolist()) for t in perturbation_targets(str(p))},
        key=str.upper,
    )
    source_info = dict(source.info)
    source_info.update(
        sha256=source.sha256,
        n_cells_source=int(source.n_obs),
        n_cells_selected=int(len(table)),
    )
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "name": config.name,
        "cellrlhf_version": __version__,
        "fingerprint": hash_json(content),
        "simulated": bool(source.simulated),
        "simulated_note": (
            "SIMULATED data (cellrlhf.data.simulate); not biological measurements."
            if source.simulated
            else ""
        ),
        "source": source_info,
        "config": config.to_dict(),
        "counts": counts,
        "part_fingerprints": part_hashes,
        "split": _split_section(assignment, splits_payload, splits_sha, rl_skipped),
        "vocab": {"n_genes": len(vocab), "file": "gene_vocab.json"},
        "perturbation_targets": targets,
        "perturbation_targets_unmeasured": [t for t in targets if t not in vocab],
        "perturbations": sorted(set(table.perts.tolist())),
        "perturbation_types": _type_counts(table),
        "cell_contexts": sorted(set(table.contexts.tolist())),
        "expression": _expression_section(config.expression, n_genes),
        "decoder": {
            "file": "expression_decoder.json",
            "method": decoder.method,
            "r2": decoder.r2,
            "n_cells": int(decoder.params.get("n_cells", 0)),
            "fitted_on": "training split cells only",
        },
        "de": dict(config.de.__dict__),
        "templates": {
            **{name: {"version": t.version, "sha256": t.sha256} for name, t in templates.items()},
            "phrases": {"version": phrases.version, "sha256": phrases.sha256},
        },
        "leakage_check": {"passed": True, **leakage},
    }


def _split_section(assignment, splits_payload: dict, splits_sha: str, rl_skipped: list) -> dict:
    """The manifest's ``split``: what is held out, cell counts, the splits file and its hash."""
    return {
        "kind": assignment.kind,
        "test_perturbations": assignment.test_perturbations,
        "test_targets": assignment.test_targets,
        "test_contexts": assignment.test_contexts,
        "excluded_perturbations": assignment.excluded_perturbations,
        "validation_perturbations": assignment.validation_perturbations,
        "test_pairs": splits_payload["test_pairs"],
        "validation_pairs": splits_payload["validation_pairs"],
        "fold": assignment.fold,
        "folds": assignment.folds,
        "cells": assignment.counts(),
        "rl_skipped_groups": rl_skipped,
        "file": SPLITS_FILENAME,
        "sha256": splits_sha,
    }


def _expression_section(expression, n_genes: np.ndarray) -> dict:
    """The manifest's ``expression``: layer, transform, reference scale, genes per cell."""
    return {
        "layer": expression.layer,
        "transform": expression.transform,
        "reference_scale": (
            "log1p(normalize_total 1e4) of the layer"
            if expression.transform == "log1p_cp10k"
            else "the layer's values as stored"
        ),
        "median_genes_per_cell": float(np.median(n_genes)) if len(n_genes) else 0.0,
    }


def _type_counts(table) -> dict[str, int]:
    """Perturbed cells per perturbation type (the chat's default type is the most common)."""
    types, counts = np.unique(table.types[~table.is_control].astype(str), return_counts=True)
    return {str(t): int(n) for t, n in zip(types, counts, strict=True)}
