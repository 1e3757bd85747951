"""Assert that no held-out information reaches training data, on the saved datasets.

Checked on what downstream stages will read (the saved directory), not on build internals:

1. Cells: no test or excluded cell appears in the pretraining corpus, in SFT train or validation
   examples (answers or prompts), or among RL training reference cells; no validation cell
   appears in training data.
2. Perturbations (``unseen_single``, ``unseen_combo``, ``unseen_context``, ``unseen_pair``): no
   training or validation row - SFT examples, RL prompts and their references - is about a
   held-out perturbation or context, whether by its ``perturbation`` / ``cell_context`` columns
   or by a ``<pert> ... </pert>`` written in its text (pretraining metadata prefixes included).
   For ``unseen_pair`` a row is about a held-out pair when it names that perturbation (or, for
   a held-out single, any combination with its target) *in that pair's context* (the row's
   ``cell_context``; for pretraining text, its ``cell_context:`` prefix); the same perturbation
   in another context is allowed.
3. Validation perturbations or pairs (when held out): no training row (pretraining, SFT train,
   RL train) is about one of them, by the same rules.
4. Evidence (:mod:`cellrlhf.data.evidence`): in every split of SFT and RL, every group an
   evidence pseudo-bulk was computed from (the ``evidence_sources`` column) is a group of
   training cells (split ``train``) of a perturbation, pair or context that is neither test nor
   validation (nor excluded), by the rules of 2 and 3.
"""

from __future__ import annotations

import re

from cellrlhf.cell2text.markup import CELL_START, CONTROL_PERT, PERT_END, PERT_START
from cellrlhf.data.schema import CONTROL_LABEL
from cellrlhf.data.splits import LeakageError

__all__ = ["check_no_leakage", "LeakageError"]

_PERT_RE = re.compile(re.escape(PERT_START) + r"(.*?)" + re.escape(PERT_END), re.S)
_CONTEXT_PREFIX_RE = re.compile(r"(?:^|;\s*)cell_context: ([^;]*);")


def _prefix_context(text: str) -> str | None:
    """The ``cell_context: X;`` metadata prefix of a pretraining text, if it has one."""
    match = _CONTEXT_PREFIX_RE.search(text.split(CELL_START, 1)[0])
    return match.group(1).strip() if match else None


def _mentioned_targets(text: str) -> list[list[str]]:
    out = []
    for match in _PERT_RE.finditer(text):
        words = [w for w in match.group(1).split() if w != CONTROL_PERT]
        if words:
            out.append(words)
    return out


class _HeldOut:
    """The perturbations (or contexts, or pairs) of one held-out set: ``test`` or ``validation``."""

    def __init__(self, splits: dict, which: str = "test"):
        self.label = "held-out" if which == "test" else "held-out validation"
        self.kind = splits["kind"]
        self.targets = {t.upper() for t in splits.get(f"{which}_targets", [])}
        self.perts = set(splits.get(f"{which}_perturbations", []))
        self.combo_sets = {
            frozenset(t.upper() for t in p.split("+")) for p in self.perts if "+" in p
        }
        self.contexts = set(splits.get(f"{which}_contexts", []))
        self.excluded = set(splits.get("excluded_perturbations", []))
        pairs = [(r["perturbation"], r["cell_context"]) for r in splits.get(f"{which}_pairs", [])]
        pairs += [(r["perturbation"], r["cell_context"]) for r in splits.get("excluded_pairs", [])]
        self.pairs = set(pairs)
        # per context: targets of held-out singles, target sets of held-out combinations
        self.pair_targets: dict[str, set[str]] = {}
        self.pair_combos: dict[str, set[frozenset]] = {}
        for p, c in self.pairs:
            upper = frozenset(t.upper() for t in p.split("+") if t)
            if "+" in p:
                self.pair_combos.setdefault(c, set()).add(upper)
            else:
                self.pair_targets.setdefault(c, set()).update(upper)

    @property
    def active(self) -> bool:
        return bool(self.perts or self.pairs or self.contexts or self.targets)

    def pert_label(self, perturbation: str, context: str) -> bool:
        if perturbation in self.excluded:
            return True
        if self.kind == "unseen_context":
            return context in self.contexts
        if self.kind == "unseen_single":
            if perturbation in ("", CONTROL_LABEL):
                return False
            return any(t.upper() in self.targets for t in perturbation.split("+"))
        if self.kind == "unseen_combo":
            return perturbation in self.perts
        if self.kind == "unseen_pair":
            if (perturbation, context) in self.pairs:
                return True
            if perturbation in ("", CONTROL_LABEL):
                return False
            held = self.pair_targets.get(context, set())
            return any(t.upper() in held for t in perturbation.split("+"))
        return False

    def text(self, text: str, context: str | None = None) -> str | None:
        """Why ``text`` (a row in ``context``) names a held-out perturbation, else None."""
        if PERT_START not in text:
            return None
        if self.kind == "unseen_pair":
            return self._pair_text(text, context)
        if self.kind not in ("unseen_single", "unseen_combo"):
            return None
        for words in _mentioned_targets(text):
            upper = {w.upper() for w in words}
            if self.kind == "unseen_single" and upper & self.targets:
                return f"names {self.label} target(s) {sorted(upper & self.targets)}"
            if self.kind == "unseen_combo" and frozenset(upper) in self.combo_sets:
                return f"names {self.label} combination {sorted(upper)}"
        return None

    def _pair_text(self, text: str, context: str | None) -> str | None:
        if not context:  # the same perturbation is allowed in other contexts: cannot judge
            return None
        targets = self.pair_targets.get(context, set())
        combos = self.pair_combos.get(context, set())
        for words in _mentioned_targets(text):
            upper = {w.upper() for w in words}
            if upper & targets or frozenset(upper) in combos:
                named = sorted(upper & targets) or sorted(upper)
                return f"names {self.label} pair {named} in context {context!r}"
        return None


class _AnyOf:
    """Held out when any of the sets holds it out (training rows: test and validation)."""

    def __init__(self, *held: _HeldOut):
        self.held = held

    def pert_label(self, perturbation: str, context: str) -> bool:
        return any(h.pert_label(perturbation, context) for h in self.held)

    def text(self, text: str, context: str | None = None) -> str | None:
        for h in self.held:
            why = h.text(text, context)
            if why:
                return why
        return None


def _column(dataset, name: str) -> list:
    """A whole column as Python objects (fast path through Arrow)."""
    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    return dataset.data.column(name).to_pylist()


def _fail(problems: list[str]) -> None:
    if problems:
        raise LeakageError(
            f"{len(problems)} leakage problem(s) in the built dataset: " + "; ".join(problems[:10])
        )


def _check_evidence(built, held, problems: list[str]) -> int:
    """Rule 4: evidence uses training groups of training perturbations only; rows checked."""
    n_rows = 0
    for part in ("sft", "rl"):
        data_dict = getattr(built, part)
        if data_dict is None:
            continue
        for split in data_dict:
            data = data_dict[split]
            if "evidence_sources" not in data.column_names:
                continue
            rows = _column(data, "evidence_sources")
            n_rows += len(rows)
            seen: set[tuple[str, str, str]] = set()
            for i, sources in enumerate(rows):
                for source in sources:
                    key = (source["split"], source["perturbation"], source["cell_context"])
                    if key in seen:
                        continue
                    seen.add(key)
                    split_of, pert, context = key
                    if split_of != "train":
                        why = f"cells of split {split_of!r}"
                    elif pert in ("", CONTROL_LABEL) or held.pert_label(pert, context):
                        why = "a held-out (test or validation) perturbation"
                    else:
                        continue
                    problems.append(
                        f"{part}/{split} row {i} evidence ({source['kind']}) uses {why}: "
                        f"{pert!r} in {context!r}"
                    )
    return n_rows


def check_no_leakage(built) -> dict:
    """Raise :class:`LeakageError` when held-out information is in training data.

    Parameters
    ----------
    built
        A :class:`~cellrlhf.data.layout.BuiltDataset` (``load_built_dataset(path)``).

    Returns
    -------
    A summary of what was checked (row and cell counts).
    """
    splits = built.splits
    cells = splits["cells"]
    test_cells = set(cells.get("test", [])) | set(cells.get("excluded", []))
    validation_cells = set(cells.get("validation", []))
    test_held = _HeldOut(splits, "test")
    validation_held = _HeldOut(splits, "validation")
    held = _AnyOf(test_held, *([validation_held] if validation_held.active else []))
    problems: list[str] = []
    checked = {"pretrain_rows": 0, "sft_rows": 0, "rl_rows": 0}

    def check_cells(ids, where: str, forbidden: set[str], what: str) -> None:
        bad = forbidden.intersection(ids)
        if bad:
            problems.append(f"{len(bad)} {what} cell(s) in {where}, e.g. {sorted(bad)[:3]}")

    if built.pretrain is not None:
        ids = _column(built.pretrain, "cell_id")
        check_cells(ids, "pretrain", test_cells, "test")
        check_cells(ids, "pretrain", validation_cells, "validation")
        checked["pretrain_rows"] = len(ids)
        for i, text in enumerate(_column(built.pretrain, "text")):
            if PERT_START in text:
                why = held.text(text, _prefix_context(text))
                if why:
                    problems.append(f"pretrain row {i} {why}")
                    break

    if built.sft is not None:
        for split in ("train", "validation"):
            if split not in built.sft:
                continue
            data = built.sft[split]
            ids = [c for row in _column(data, "cell_ids") for c in row]
            check_cells(ids, f"sft/{split}", test_cells, "test")
            if split == "train":
                check_cells(ids, "sft/train", validation_cells, "validation")
            rule = held if split == "train" else test_held
            for i, (pert, context, messages) in enumerate(
                zip(
                    _column(data, "perturbation"),
                    _column(data, "cell_context"),
                    _column(data, "messages"),
                    strict=True,
                )
            ):
                checked["sft_rows"] += 1
                if rule.pert_label(pert, context):
                    problems.append(
                        f"sft/{split} row {i} is about held-out {pert!r} in {context!r}"
                    )
                    continue
                for message in messages:
                    why = rule.text(message["content"], context)
                    if why:
                        problems.append(f"sft/{split} row {i} {why}")
                        break

    if built.rl is not None and "train" in built.rl:
        data = built.rl["train"]
        ids = [c for row in _column(data, "reference_cell_ids") for c in row]
        check_cells(ids, "rl/train references", test_cells | validation_cells, "test/validation")
        for i, (pert, context, prompt) in enumerate(
            zip(
                _column(data, "perturbation"),
                _column(data, "cell_context"),
                _column(data, "prompt"),
                strict=True,
            )
        ):
            checked["rl_rows"] += 1
            if held.pert_label(pert, context):
                problems.append(f"rl/train row {i} is about held-out {pert!r} in {context!r}")
                continue
            for message in prompt:
                why = held.text(message["content"], context)
                if why:
                    problems.append(f"rl/train row {i} {why}")
                    break
        if "control_split" in data.column_names:
            bad = [s for s in _column(data, "control_split") if s != "train"]
            if bad:
                problems.append(f"{len(bad)} rl/train row(s) use controls of split(s) {set(bad)}")
    if built.rl is not None and "validation" in built.rl:
        data = built.rl["validation"]
        ids = [c for row in _column(data, "reference_cell_ids") for c in row]
        check_cells(ids, "rl/validation references", test_cells, "test")
        for i, (pert, context) in enumerate(
            zip(_column(data, "perturbation"), _column(data, "cell_context"), strict=True)
        ):
            checked["rl_rows"] += 1
            if test_held.pert_label(pert, context):
                problems.append(f"rl/validation row {i} is about test {pert!r} in {context!r}")
    checked["evidence_rows"] = _check_evidence(built, held, problems)
    _fail(problems)
    checked["test_cells"] = len(test_cells)
    checked["validation_cells"] = len(validation_cells)
    return checked
