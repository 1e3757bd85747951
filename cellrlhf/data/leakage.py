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
    """Rule 4: evidence uses training groups of training perturbations (and training controls)
    only; rows checked."""
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
                    elif pert == CONTROL_LABEL:  # training controls: the reference of a change
                        continue
                    elif pert == "" or held.pert_label(pert, context):
                        why = "a held-out (test or validation) perturbation"
                    else:
                        continue
                    problems.append(
                        f"{part}/{split} row {i} evidence ({source['kind']}) uses {why}: "
                        f"{pert!r} in {context!r}"
                    )
    return n_rows


class _Audit:
    """The cells and perturbations ``check_no_leakage`` holds out, and the problems it found."""

    def __init__(self, splits: dict):
        cells = splits["cells"]
        self.test_cells = set(cells.get("test", [])) | set(cells.get("excluded", []))
        self.validation_cells = set(cells.get("validation", []))
        self.test_held = _HeldOut(splits, "test")
        validation_held = _HeldOut(splits, "validation")
        self.held = _AnyOf(self.test_held, *([validation_held] if validation_held.active else []))
        self.problems: list[str] = []

    def cells(self, ids, where: str, forbidden: set[str], what: str) -> None:
        bad = forbidden.intersection(ids)
        if bad:
            self.problems.append(f"{len(bad)} {what} cell(s) in {where}, e.g. {sorted(bad)[:3]}")

    def messages(self, where: str, messages, rule, context) -> None:
        """The first message whose text names a held-out perturbation, as a problem."""
        for message in messages:
            why = rule.text(message["content"], context)
            if why:
                self.problems.append(f"{where} {why}")
                return


def _check_pretrain(pretrain, audit: _Audit) -> int:
    """Rules 1-3 on the pretraining corpus (the first text naming a held-out one); rows."""
    ids = _column(pretrain, "cell_id")
    audit.cells(ids, "pretrain", audit.test_cells, "test")
    audit.cells(ids, "pretrain", audit.validation_cells, "validation")
    for i, text in enumerate(_column(pretrain, "text")):
        if PERT_START in text:
            why = audit.held.text(text, _prefix_context(text))
            if why:
                audit.problems.append(f"pretrain row {i} {why}")
                break
    return len(ids)


def _check_sft(sft, audit: _Audit) -> int:
    """Rules 1-3 on SFT train (nothing held out) and validation (nothing of test); rows."""
    n_rows = 0
    for split in ("train", "validation"):
        if split not in sft:
            continue
        data = sft[split]
        ids = [c for row in _column(data, "cell_ids") for c in row]
        audit.cells(ids, f"sft/{split}", audit.test_cells, "test")
        if split == "train":
            audit.cells(ids, "sft/train", audit.validation_cells, "validation")
        rule = audit.held if split == "train" else audit.test_held
        columns = (_column(data, c) for c in ("perturbation", "cell_context", "messages"))
        for i, (pert, context, messages) in enumerate(zip(*columns, strict=True)):
            n_rows += 1
            if rule.pert_label(pert, context):
                audit.problems.append(
                    f"sft/{split} row {i} is about held-out {pert!r} in {context!r}"
                )
                continue
            audit.messages(f"sft/{split} row {i}", messages, rule, context)
    return n_rows


def _check_rl_train(data, audit: _Audit) -> int:
    """Rules 1-3 on RL training prompts, their reference cells and controls; rows."""
    ids = [c for row in _column(data, "reference_cell_ids") for c in row]
    forbidden = audit.test_cells | audit.validation_cells
    audit.cells(ids, "rl/train references", forbidden, "test/validation")
    columns = (_column(data, c) for c in ("perturbation", "cell_context", "prompt"))
    n_rows = 0
    for i, (pert, context, prompt) in enumerate(zip(*columns, strict=True)):
        n_rows += 1
        if audit.held.pert_label(pert, context):
            audit.problems.append(f"rl/train row {i} is about held-out {pert!r} in {context!r}")
            continue
        audit.messages(f"rl/train row {i}", prompt, audit.held, context)
    if "control_split" in data.column_names:
        bad = [s for s in _column(data, "control_split") if s != "train"]
        if bad:
            audit.problems.append(f"{len(bad)} rl/train row(s) use controls of split(s) {set(bad)}")
    return n_rows


def _check_rl_validation(data, audit: _Audit) -> int:
    """RL validation prompts: no test reference cell, no test perturbation; rows."""
    ids = [c for row in _column(data, "reference_cell_ids") for c in row]
    audit.cells(ids, "rl/validation references", audit.test_cells, "test")
    columns = (_column(data, "perturbation"), _column(data, "cell_context"))
    for i, (pert, context) in enumerate(zip(*columns, strict=True)):
        if audit.test_held.pert_label(pert, context):
            audit.problems.append(f"rl/validation row {i} is about test {pert!r} in {context!r}")
    return len(data)


def check_no_leakage(built) -> dict:
    """Raise :class:`LeakageError` when held-out information is in training data.

    Parameters
    ----------
    built
        A :class:`~cellrlhf.data.layout.DatasetDir` (``open_dataset_dir(path)``).

    Returns
    -------
    A summary of what was checked (row and cell counts).
    """
    audit = _Audit(built.splits)
    checked = {"pretrain_rows": 0, "sft_rows": 0, "rl_rows": 0}
    if built.pretrain is not None:
        checked["pretrain_rows"] = _check_pretrain(built.pretrain, audit)
    if built.sft is not None:
        checked["sft_rows"] = _check_sft(built.sft, audit)
    if built.rl is not None and "train" in built.rl:
        checked["rl_rows"] += _check_rl_train(built.rl["train"], audit)
    if built.rl is not None and "validation" in built.rl:
        checked["rl_rows"] += _check_rl_validation(built.rl["validation"], audit)
    checked["evidence_rows"] = _check_evidence(built, audit.held, audit.problems)
    _fail(audit.problems)
    checked["test_cells"] = len(audit.test_cells)
    checked["validation_cells"] = len(audit.validation_cells)
    return checked
