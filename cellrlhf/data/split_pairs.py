"""(perturbation, cell context) pairs for the ``unseen_pair`` split.

A pair is written ``"PERT@CONTEXT"`` in configs and split manifests' fold lists (``"TP53@A172"``,
``"KLF1+MAP2K6@K562"``); configs also accept ``{perturbation: TP53, cell_context: A172}``.
A pair is *eligible* (drawn by ``test_fraction``, rotated over folds) when its perturbation is a
single perturbation measured in at least two contexts; a combination measured in two contexts
can still be named. A set of held-out pairs is *valid* when every perturbation it names stays
trained in at least one context: the question is how a perturbation known elsewhere acts in a
new context.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from cellrlhf.data.schema import CONTROL_LABEL, perturbation_targets
from cellrlhf.data.split_config import SplitError
from cellrlhf.data.split_folds import fold_partition

__all__ = [
    "PAIR_SEPARATOR",
    "Pair",
    "pair_name",
    "parse_pair",
    "normalize_pair_spec",
    "contexts_by_perturbation",
    "eligible_pairs",
    "untrained_perturbations",
    "check_pairs_leave_training",
    "draw_pairs",
    "single_targets_in",
    "split_unseen_pair",
]

PAIR_SEPARATOR = "@"
Pair = tuple[str, str]


def pair_name(pair: Pair) -> str:
    """``("TP53", "A172")`` -> ``"TP53@A172"``."""
    return f"{pair[0]}{PAIR_SEPARATOR}{pair[1]}"


def parse_pair(name: str, where: str = "split.test_pairs") -> Pair:
    """``"TP53@A172"`` -> ``("TP53", "A172")``; a clear :class:`SplitError` for anything else."""
    parts = str(name).split(PAIR_SEPARATOR)
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        raise SplitError(
            f"{where} entry {name!r} is not a pair; write PERTURBATION@CONTEXT (e.g. "
            "'MAPK1@A172') or a mapping {perturbation: MAPK1, cell_context: A172}, with exactly "
            "one '@'."
        )
    return parts[0].strip(), parts[1].strip()


def normalize_pair_spec(value, where: str) -> tuple[str, ...] | None:
    """A config's pair list (strings or mappings) as ``("PERT@CONTEXT", ...)``, checked."""
    if value is None:
        return None
    items = [value] if isinstance(value, (str, Mapping)) else list(value)
    out = []
    for item in items:
        if isinstance(item, Mapping):
            unknown = set(item) - {"perturbation", "cell_context"}
            if unknown or not {"perturbation", "cell_context"} <= set(item):
                raise SplitError(
                    f"{where} entry {dict(item)} must have exactly the keys 'perturbation' and "
                    "'cell_context'."
                )
            pair = (str(item["perturbation"]).strip(), str(item["cell_context"]).strip())
            if any(PAIR_SEPARATOR in p for p in pair):
                raise SplitError(f"{where} entry {dict(item)}: names may not contain '@'.")
            out.append(pair_name(pair))
        else:
            out.append(pair_name(parse_pair(str(item), where)))
    return tuple(out)


def contexts_by_perturbation(perts: np.ndarray, contexts: np.ndarray) -> dict[str, set[str]]:
    """Perturbation -> the contexts it is measured in (controls left out)."""
    out: dict[str, set[str]] = {}
    for p, c in set(zip(perts.tolist(), contexts.tolist(), strict=True)):
        if p != CONTROL_LABEL:
            out.setdefault(str(p), set()).add(str(c))
    return out


def eligible_pairs(where: Mapping[str, set[str]], *, combos: bool = False) -> list[Pair]:
    """Pairs of the perturbations measured in at least two contexts, sorted.

    Single perturbations only unless ``combos``: a combination follows its singles (it is
    excluded where a held-out single names its target), so drawing or rotating combination
    pairs too would often leave a combination trained nowhere; name one in ``test_pairs``.
    """
    return sorted(
        (p, c)
        for p, contexts in where.items()
        if len(contexts) >= 2 and (combos or "+" not in p)
        for c in contexts
    )


def untrained_perturbations(held: Iterable[Pair], where: Mapping[str, set[str]]) -> list[str]:
    """Perturbations of ``held`` left with no training context.

    A context of perturbation ``q`` is lost when ``(q, context)`` is held out, or, for a
    combination, when a held-out single in that context names one of its targets (the
    combination is then excluded there, or follows the single into its split).
    """
    held = set(held)
    single_targets: dict[str, set[str]] = {}
    for p, c in held:
        if "+" not in p:
            single_targets.setdefault(c, set()).update(t.upper() for t in perturbation_targets(p))
    out = []
    for q in sorted({p for p, _ in held}):
        targets = {t.upper() for t in perturbation_targets(q)}
        trained = [
            c
            for c in where.get(q, ())
            if (q, c) not in held and not ("+" in q and targets & single_targets.get(c, set()))
        ]
        if not trained:
            out.append(q)
    return out


def check_pairs_leave_training(
    held: Iterable[Pair], where: Mapping[str, set[str]], what: str
) -> None:
    """Raise :class:`SplitError` when ``held`` leaves some perturbation no training context."""
    held = list(held)
    bad = untrained_perturbations(held, where)
    if bad:
        raise SplitError(
            f"{what} leave {bad} with no training context (held out, or excluded because a "
            f"held-out single in that context names a target) of "
            f"{ {p: sorted(where.get(p, ())) for p in bad} }; unseen_pair keeps each held-out "
            "perturbation trained in at least one other context. Hold out fewer of its pairs."
        )


def draw_pairs(
    candidates: Iterable[Pair],
    n: int,
    where: Mapping[str, set[str]],
    already_held: Iterable[Pair],
    rng: np.random.Generator,
    what: str,
) -> list[Pair]:
    """Draw ``n`` pairs (seeded) so every held-out perturbation keeps a training context.

    Candidates are visited in a seeded random order and taken while that holds for every
    perturbation held out so far (:func:`untrained_perturbations`).
    """
    held = list(already_held)
    pool = sorted(set(candidates) - set(held))
    chosen: list[Pair] = []
    for i in rng.permutation(len(pool)) if pool else []:
        if len(chosen) == n:
            break
        pair = pool[int(i)]
        if not untrained_perturbations(held + chosen + [pair], where):
            chosen.append(pair)
    if len(chosen) < n:
        raise SplitError(
            f"cannot hold out {n} {what}: only {len(chosen)} of the {len(pool)} candidate pairs "
            "can go while every perturbation stays trained in another context. Lower the number "
            "or name the pairs."
        )
    return sorted(chosen)


def single_targets_in(pairs: list[Pair], context: str) -> set[str]:
    """Upper-cased targets of the single perturbations held out in ``context``."""
    return {
        t.upper()
        for p, c in pairs
        if c == context and "+" not in p
        for t in perturbation_targets(p)
    }


def split_unseen_pair(assignment, data, rng: np.random.Generator) -> None:
    """Label the cells of an ``unseen_pair`` split (test pairs, then validation pairs).

    Parameters
    ----------
    assignment
        The :class:`~cellrlhf.data.splits.SplitAssignment` being filled (labels all ``train``).
    data
        Per-cell arrays (``perts``, ``contexts``, ``unique_perts``, ``pert_codes``).
    rng
        The split's generator (draws by ``test_fraction`` and ``n_validation_pairs``).
    """
    config = assignment.config
    where = contexts_by_perturbation(data.perts, data.contexts)
    eligible = eligible_pairs(where)
    if not eligible:
        raise SplitError(
            "unseen_pair needs single perturbations measured in at least two cell contexts; this "
            "data has none. Use unseen_single or unseen_context."
        )
    if config.folds is not None:
        partition = fold_partition(
            [pair_name(p) for p in eligible],
            config.folds,
            config.seed,
            group_of=lambda name: parse_pair(name)[0],
            what="eligible pairs (single perturbations in >= 2 contexts)",
            accept=lambda fold: not untrained_perturbations(map(parse_pair, fold), where),
        )
        assignment.fold_units = partition
        test = [parse_pair(n) for n in partition[config.fold]]
    elif config.test_pairs is not None:
        test = _named_pairs(config.test_pairs, where, "split.test_pairs")
    else:
        n = max(1, int(round(config.test_fraction * len(eligible))))
        test = draw_pairs(eligible, n, where, (), rng, "test pairs")
    check_pairs_leave_training(test, where, "the test pairs")
    test = sorted(set(test))
    validation: list[Pair] = []
    if config.validation_pairs:
        validation = _named_pairs(config.validation_pairs, where, "split.validation_pairs")
        clash = sorted(set(validation) & set(test))
        if clash:
            raise SplitError(
                f"split.validation_pairs {[pair_name(p) for p in clash]} are held out for test "
                "already; choose other pairs for validation."
            )
        check_pairs_leave_training(test + validation, where, "the test and validation pairs")
    elif config.n_validation_pairs > 0:
        candidates = [p for p in eligible if p not in set(test)]
        validation = draw_pairs(
            candidates, config.n_validation_pairs, where, test, rng, "validation pairs"
        )
    assignment.test_pairs = _label_pairs(assignment, data, test, "test")
    assignment.validation_pairs = _label_pairs(assignment, data, sorted(validation), "validation")


def _named_pairs(names, where: dict[str, set[str]], key: str) -> list[Pair]:
    """Named pairs, each measured and of a perturbation measured in >= 2 contexts."""
    pairs = [parse_pair(n, key) for n in names]
    missing = [pair_name(p) for p in pairs if p[1] not in where.get(p[0], set())]
    if missing:
        known = [pair_name(p) for p in eligible_pairs(where, combos=True)]
        raise SplitError(
            f"{key} names {missing}, which are not measured (perturbation@context) in the data; "
            f"eligible pairs: {known[:30]}."
        )
    single = [pair_name(p) for p in pairs if len(where[p[0]]) < 2]
    if single:
        raise SplitError(
            f"{key} names {single}, whose perturbations are measured in one context only: "
            "unseen_pair needs the perturbation trained in another context. Choose pairs of "
            "perturbations measured in >= 2 contexts."
        )
    return sorted(set(pairs))


def _label_pairs(assignment, data, pairs: list[Pair], split: str) -> list[Pair]:
    """Label the cells of ``pairs`` (and the combinations that name a held-out single's target
    in its context, by ``combos_with_test_targets``); returns the pairs now in ``split``."""
    labels = assignment.labels
    free = labels == "train"
    for p, c in pairs:
        labels[free & (data.perts == p) & (data.contexts == c)] = split
    to_split = assignment.config.combos_with_test_targets == "test"
    hit_pairs = set(pairs)
    for context in sorted({c for _, c in pairs}):
        upper = single_targets_in(pairs, context)
        if not upper:
            continue
        names = np.array(
            [
                "+" in p and any(t.upper() in upper for t in perturbation_targets(p))
                for p in data.unique_perts
            ],
            dtype=bool,
        )
        hit = names[data.pert_codes] & (data.contexts == context) & (labels == "train")
        labels[hit] = split if to_split else "excluded"
        found = {(str(p), context) for p in set(data.perts[hit])}
        if to_split:
            hit_pairs |= found
        else:
            assignment.excluded_pairs = sorted(set(assignment.excluded_pairs) | found)
    return sorted(hit_pairs)
