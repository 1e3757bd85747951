"""Why does a trained cell LM lose to the mean of the training perturbations? Ablations.

Samples a saved model's cells for the RL prompts of a built dataset (any split: ``train``
perturbations it was trained on, ``validation`` or ``test`` ones it never saw), decodes them with
the dataset's decoder and scores each prompt's pseudo-bulk change against the real change stored
in the prompt row (``reference_perturbed - reference_control``), next to the mean baseline (the
mean real change of the ``rl/train`` rows of the same context, leaving the prompted perturbation
out, so that on a training prompt the baseline does not contain the answer). Each ``--variant`` is one
ablation; all variants run in one process on the same prompts, so they compare side by side.

    python benchmarks/diagnose_sft.py --dataset-dir runs/demo/data --model runs/demo/sft \
        --split train --split test --cells 64 --variant base --variant constrained \
        --variant cells256 --variant temp0.7 --out benchmarks/results/diagnose_sft.csv

Variants: ``base`` (temperature 1, unconstrained, ``--cells`` cells), ``constrained`` (the cell
grammar: no repeated or unknown gene), ``cells<N>`` (N cells per prompt), ``temp<T>``,
``budget<N>`` (answer budget in tokens), ``valid_only`` (only fully valid cells enter the
pseudo-bulk), ``own_control`` (the control subtracted is the model's own: its cells for the same
prompt with the target replaced by ``<control>``, 4x as many cells, instead of the decoded real
control cells), ``oracle_pooled<N>`` / ``oracle_own<N>`` (no model: N real cells of the
context's other training perturbations / of the prompt's own perturbation stand in for the
answers; the ceiling of a perfect sampler at N cells). Columns per (variant, split, prompt): ``pearson_delta`` of the model, of the mean
baseline, the model's correlation with the mean baseline's change (``r_model_mean``), the
perturbation-specific Pearson (change minus the training mean, both sides), validity, cell length
and, when ``train`` is among the splits, each held-out prediction calibrated on the training
prompts (``pearson_delta_calibrated``: the model's mean training-prompt change replaced by the
mean real training change; ``pearson_specific_calibrated``: its deviation from that mean).
``unknown_target`` / ``constrained_unknown_target`` write the target ``<unk_pert>``; run next to
``base`` / ``constrained`` they add ``pearson_delta_unk_anchored`` (the mean baseline plus the
model's answer minus its answer for an unknown target) and ``pearson_specific_unk_anchored``
(that difference against the real change minus the training mean: what the model knows about
the target itself, with the bias shared by all its answers cancelled). With ``--split
validation --split test``: ``pearson_delta_val_calibrated`` / ``pearson_specific_val_calibrated``
(each test prediction minus the model's mean error on the validation prompts).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _variant(name: str, cells: int) -> dict:
    spec = {
        "name": name,
        "cells": cells,
        "temperature": 1.0,
        "constrained": False,
        "budget": None,
        "valid_only": False,
        "own_control": False,
        "length_matched": False,
        "unknown_target": False,
        "oracle": None,
    }
    if name == "base":
        return spec
    if name == "constrained":
        return {**spec, "constrained": True}
    if name == "valid_only":
        return {**spec, "valid_only": True}
    if name == "own_control":
        return {**spec, "own_control": True}
    if name == "unknown_target":  # the target written <unk_pert> (perturbation dropout's word)
        return {**spec, "unknown_target": True}
    if name == "constrained_unknown_target":
        return {**spec, "constrained": True, "unknown_target": True}
    if name == "length_matched":  # constrained, each cell >= the context's median real length
        return {**spec, "constrained": True, "length_matched": True}
    m = re.fullmatch(r"oracle_(pooled|own)([0-9]*)", name)
    if m:  # no model: real cells stand in for its answers (see _oracle_cells)
        return {**spec, "oracle": m.group(1), "cells": int(m.group(2) or cells)}
    for prefix, key, cast in (
        ("cells", "cells", int),
        ("temp", "temperature", float),
        ("budget", "budget", int),
    ):
        m = re.fullmatch(prefix + r"([0-9.]+)", name)
        if m:
            return {**spec, key: cast(m.group(1))}
    raise SystemExit(f"unknown variant {name!r}")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    from cellrlhf.metrics.fidelity import pearson_rows

    return float(pearson_rows(a, b))


def _own_controls(generator, settings, rows, decoder, n_cells: int) -> dict:
    """Context -> mean decoded cell the model writes for ``<pert> <control> </pert>``."""
    import re

    from cellrlhf.cell2text.markup import extract_cell

    out = {}
    for ctx in dict.fromkeys(rows["cell_context"]):
        prompt = [dict(m) for m in next(r for r in rows if r["cell_context"] == ctx)["prompt"]]
        prompt[-1]["content"] = re.sub(
            r"<pert>.*?</pert>", "<pert> <control> </pert>", prompt[-1]["content"]
        )
        comps = generator.generate([prompt] * n_cells, settings, batch_size=64)
        X, _ = decoder.decode([extract_cell(c.text).sentence for c in comps])
        X = np.asarray(X.todense()) if hasattr(X, "todense") else np.asarray(X)
        out[ctx] = X.mean(axis=0)
    return out


def _oracle_cells(kind: str, rows, train, n_cells: int, rng) -> list[str]:
    """Real cell sentences in place of a model's answers, ``n_cells`` per prompt (drawn with
    replacement). ``pooled``: cells of the context's *other* training perturbations (rl/train
    reference cells), i.e. what a perfect model of the average perturbed cell writes: its score
    at ``n_cells`` is the ceiling of a model that knows nothing about the target. ``own``: the
    prompt's own reference cells (a perfect model of this perturbation; in-sample, since the
    same cells make the real pseudo-bulk, so an upper bound)."""
    out = []
    for r in rows:
        if kind == "own":
            pool = list(r["reference_sentences"])
        else:
            pool = [
                s
                for t in train
                if t["cell_context"] == r["cell_context"] and t["perturbation"] != r["perturbation"]
                for s in t["reference_sentences"]
            ]
        out += [pool[i] for i in rng.choice(len(pool), size=n_cells, replace=True)]
    return out


def _unknown_target(prompt: list[dict]) -> list[dict]:
    """The prompt with its perturbation written ``<pert> <unk_pert> </pert>``."""
    import re

    out = [dict(m) for m in prompt]
    out[-1]["content"] = re.sub(
        r"<pert>.*?</pert>", "<pert> <unk_pert> </pert>", out[-1]["content"]
    )
    return out


def _length_matched(generator, settings, rows, n_cells: int, median_length: dict) -> list:
    """Each prompt's answers with ``min_genes`` = its context's median real cell length."""
    from dataclasses import replace

    out = []
    for r in rows:
        calibrated = replace(settings, min_genes=max(1, median_length[r["cell_context"]]))
        out += generator.generate([r["prompt"]] * n_cells, calibrated, batch_size=64)
    return out


def _model_centred(records: list[dict], variant: str, split: str) -> None:
    """``pearson_model_centred``: each prediction minus the model's own mean prediction over the
    split's prompts of the same context, against the real change minus the training mean. High
    on ``train`` means the model tells trained perturbations apart; the gap to ``pearson_delta``
    is the model's shared bias against the decoded control."""
    mine = [r for r in records if r["variant"] == variant and r["split"] == split]
    for ctx in {r["cell_context"] for r in mine}:
        group = [r for r in mine if r["cell_context"] == ctx]
        centre = np.mean([r["_pred_delta"] for r in group], axis=0)
        for r in group:
            r["pearson_model_centred"] = (
                _pearson(r["_pred_delta"] - centre, r["_real_specific"])
                if len(group) > 1
                else np.nan
            )


def _calibrated(records: list[dict], mean_delta_of) -> None:
    """``pearson_delta_calibrated``: a held-out prediction re-anchored on the training prompts,
    ``pred - mean(model's training-prompt predictions) + mean real training change`` (same
    variant and context), i.e. the model's own bias, measured where the truth is known, removed.
    ``pearson_specific_calibrated``: its deviation from its training mean against the real
    change minus the training mean. Needs the ``train`` split in the same run; NaN elsewhere."""
    for r in records:
        r.setdefault("pearson_delta_calibrated", np.nan)
        r.setdefault("pearson_specific_calibrated", np.nan)
    for r in records:
        if r["split"] == "train":
            continue
        own = [
            t["_pred_delta"]
            for t in records
            if t["split"] == "train"
            and t["variant"] == r["variant"]
            and t["cell_context"] == r["cell_context"]
        ]
        if not own:
            continue
        deviation = r["_pred_delta"] - np.mean(own, axis=0)
        mean_d = mean_delta_of(r["cell_context"], r["perturbation"])
        r["pearson_delta_calibrated"] = _pearson(deviation + mean_d, r["_real_specific"] + mean_d)
        r["pearson_specific_calibrated"] = _pearson(deviation, r["_real_specific"])


def _validation_calibrated(records: list[dict]) -> None:
    """``pearson_delta_val_calibrated``: a test prediction minus the model's mean error on the
    validation prompts of the same variant and context (``pred - real``, held-out perturbations
    whose truth a user has), i.e. its shared bias estimated where RL selection would look;
    ``pearson_specific_val_calibrated`` the same against the real change minus the training
    mean. Needs ``validation`` and ``test`` in the same run; NaN elsewhere."""
    for r in records:
        r.setdefault("pearson_delta_val_calibrated", np.nan)
        r.setdefault("pearson_specific_val_calibrated", np.nan)
        if r["split"] != "test":
            continue
        errors = [
            t["_pred_delta"] - t["_real_delta"]
            for t in records
            if t["split"] == "validation"
            and t["variant"] == r["variant"]
            and t["cell_context"] == r["cell_context"]
        ]
        if not errors:
            continue
        corrected = r["_pred_delta"] - np.mean(errors, axis=0)
        mean_d = r["_real_delta"] - r["_real_specific"]
        r["pearson_delta_val_calibrated"] = _pearson(corrected, r["_real_delta"])
        r["pearson_specific_val_calibrated"] = _pearson(corrected - mean_d, r["_real_specific"])


def _unknown_anchored(records: list[dict]) -> None:
    """``pearson_delta_unk_anchored``: the mean baseline plus what the model says about the
    target beyond an unknown perturbation, ``mean + (pred - pred with the target written
    <unk_pert>)`` (same prompt, evidence and sampler, so a bias shared by all the model's cells
    cancels); ``pearson_specific_unk_anchored``: that difference against the real change minus
    the training mean, i.e. what the model knows about the target itself. Pairs ``base`` with
    ``unknown_target`` and ``constrained`` with ``constrained_unknown_target``; NaN elsewhere."""
    partner = {"base": "unknown_target", "constrained": "constrained_unknown_target"}
    index = {(r["variant"], r["split"], r["perturbation"], r["cell_context"]): r for r in records}
    for r in records:
        r.setdefault("pearson_delta_unk_anchored", np.nan)
        r.setdefault("pearson_specific_unk_anchored", np.nan)
        other = index.get(
            (partner.get(r["variant"]), r["split"], r["perturbation"], r["cell_context"])
        )
        if other is None:
            continue
        deviation = r["_pred_delta"] - other["_pred_delta"]
        mean_d = r["_real_delta"] - r["_real_specific"]
        r["pearson_delta_unk_anchored"] = _pearson(mean_d + deviation, r["_real_delta"])
        r["pearson_specific_unk_anchored"] = _pearson(deviation, r["_real_specific"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--model", required=True, help="model dir; none for oracle_* only")
    parser.add_argument(
        "--split",
        action="append",
        default=None,
        help="rl split(s) to prompt with (train, validation, test)",
    )
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--cells", type=int, default=64)
    parser.add_argument("--max-prompts", type=int, default=12, help="per split (seeded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/diagnose_sft.csv")
    args = parser.parse_args()

    from cellrlhf.cell2text.markup import extract_cell
    from cellrlhf.data.layout import open_dataset_dir
    from cellrlhf.metrics.fidelity import change_from_control
    from cellrlhf.metrics.sampling_noise import split_half_change_reliability
    from cellrlhf.sampling import GenerationSettings, Sampler
    from cellrlhf.sft.model_dir import load_model_dir

    built = open_dataset_dir(args.dataset_dir)
    decoder = built.decoder()
    rl = built.rl
    train = rl["train"]

    def real_delta_of(row) -> np.ndarray:
        return np.asarray(row["reference_perturbed"]) - np.asarray(row["reference_control"])

    train_deltas = [(r["cell_context"], r["perturbation"], real_delta_of(r)) for r in train]

    def mean_delta_for(ctx: str, perturbation: str) -> np.ndarray:
        """The mean baseline of a prompt: the mean real change of the context's training
        perturbations other than the prompted one (on a training prompt, including its own
        change would put the answer into the baseline)."""
        return np.mean([d for c, p, d in train_deltas if c == ctx and p != perturbation], axis=0)

    median_length = {  # genes per real training cell of each context (rl/train references)
        ctx: int(
            np.median(
                [
                    len(x.split())
                    for r in train
                    if r["cell_context"] == ctx
                    for x in r["reference_sentences"]
                ]
            )
        )  # fmt: skip
        for ctx in set(train["cell_context"])
    }
    generator = None
    if args.model != "none":
        loaded = load_model_dir(args.model)
        generator = Sampler(loaded.model, loaded.tokenizer, cell_genes=loaded.vocab)
    elif not all(_variant(v, args.cells)["oracle"] for v in args.variant or ["base"]):
        raise SystemExit("--model none runs only the oracle_* variants")
    oracle_rng = np.random.default_rng(args.seed + 1)
    top_k = ((built.manifest.get("config") or {}).get("sentences") or {}).get("top_k") or 100
    default_budget = int(top_k) + 8
    rng = np.random.default_rng(args.seed)
    records = []
    for split in args.split or ["train", "test"]:
        rows = rl[split]
        idx = np.sort(rng.choice(len(rows), size=min(args.max_prompts, len(rows)), replace=False))
        rows = rows.select(idx.tolist())
        for vname in args.variant or ["base"]:
            v = _variant(vname, args.cells)
            settings = GenerationSettings(
                max_new_tokens=v["budget"] or default_budget,
                temperature=v["temperature"],
                top_p=1.0,
                top_k=0,
                seed=args.seed,
                constrain_cells=v["constrained"],
            )
            t0 = time.perf_counter()
            prompts = [
                _unknown_target(r["prompt"]) if v["unknown_target"] else r["prompt"]
                for r in rows
                for _ in range(v["cells"])
            ]
            if v["oracle"]:
                texts = _oracle_cells(v["oracle"], rows, train, v["cells"], oracle_rng)
                texts = [f"<cell> {t} </cell>" for t in texts]
            elif v["length_matched"]:
                comps = _length_matched(generator, settings, rows, v["cells"], median_length)
                texts = [c.text for c in comps]
            else:
                comps = generator.generate(prompts, settings, batch_size=64)
                texts = [c.text for c in comps]
            extracted = [extract_cell(t) for t in texts]
            X, report = decoder.decode([e.sentence for e in extracted])
            X = np.asarray(X.todense()) if hasattr(X, "todense") else np.asarray(X)
            closed = np.asarray([e.closed for e in extracted])
            valid = (
                closed
                & (report.n_valid > 0)
                & (report.n_unknown == 0)
                & (report.n_duplicates == 0)
                & (report.n_truncated == 0)
            )
            own = (
                _own_controls(generator, settings, rows, decoder, 4 * v["cells"])
                if v["own_control"]
                else {}
            )
            seconds = time.perf_counter() - t0
            for i, r in enumerate(rows):
                sl = slice(i * v["cells"], (i + 1) * v["cells"])
                keep = valid[sl] if v["valid_only"] else np.ones(v["cells"], bool)
                if not keep.any():
                    keep = np.ones(v["cells"], bool)
                pred = X[sl][keep].mean(axis=0)
                control = own.get(r["cell_context"], np.asarray(r["decoded_control"]))
                pred_delta = change_from_control(pred, control)
                real_delta = real_delta_of(r)
                mean_d = mean_delta_for(r["cell_context"], r["perturbation"])
                records.append(
                    {
                        "variant": vname,
                        "split": split,
                        "perturbation": r["perturbation"],
                        "cell_context": r["cell_context"],
                        "pearson_delta": _pearson(pred_delta, real_delta),
                        "pearson_delta_mean_baseline": _pearson(mean_d, real_delta),
                        "r_model_mean": _pearson(pred_delta, mean_d),
                        "pearson_specific": _pearson(pred_delta - mean_d, real_delta - mean_d),
                        "sampling_reliability": float(
                            split_half_change_reliability(
                                X[sl][keep], np.zeros(int(keep.sum())), np.zeros(1), control
                            )[0]
                        ),
                        "valid_cell_fraction": float(valid[sl].mean()),
                        "duplicate_genes_per_cell": float(np.mean(report.n_duplicates[sl])),
                        "genes_per_cell": float(np.mean(report.n_valid[sl])),
                        "closed_fraction": float(closed[sl].mean()),
                        "seconds": seconds / len(rows),
                        "_pred_delta": pred_delta,
                        "_real_specific": real_delta - mean_d,
                        "_real_delta": real_delta,
                    }
                )
            _model_centred(records, vname, split)
            print(
                pd.DataFrame(records)
                .query("variant == @vname and split == @split")
                .drop(
                    columns=[
                        "perturbation",
                        "cell_context",
                        "_pred_delta",
                        "_real_specific",
                        "_real_delta",
                    ]
                )
                .mean(numeric_only=True)
                .round(3)
                .to_dict(),
                vname,
                split,
                flush=True,
            )
    _calibrated(records, mean_delta_for)
    _unknown_anchored(records)
    _validation_calibrated(records)
    table = pd.DataFrame(records).drop(columns=["_pred_delta", "_real_specific", "_real_delta"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    summary = table.groupby(["split", "variant"], sort=False).mean(numeric_only=True).round(3)
    print(summary.to_string())


if __name__ == "__main__":
    main()
