"""Assert that no held-out information reaches training data, on the saved datasets.

Checked on what downstream stages will read (the saved directory), not on build internals:

1. Cells: no test or excluded cell appears in the pretraining corpus, in SFT train or validation
   examples (answers or prompts), or among RL training reference cells; no validation cell
   appears in training data.
2. Perturbations (``unseen_single``, ``unseen_combo``, ``unseen_context``): no training or
   validation row - SFT examples, RL prompts and their references - is about a held-out
   perturbation or context, whether by its ``perturbation`` / ``cell_context`` columns or by a
   ``<pert> ... </pert>`` written in its text (pretraining metadata prefixes included).
3. Validation perturbations (when held out): no training row (pretraining, SFT train, RL train)
   is about one of them, by the same rules.
"""

from __future__ import annotations

import re

from cellrlhf.cell2text.markup import CONTROL_PERT, PERT_END, PERT_START
from cellrlhf.data.schema import CONTROL_LABEL
from cellrlhf.data.splits import LeakageError

__all__ = ["check_no_leakage", "LeakageError"]

_PERT_RE = re.compile(re.escape(PERT_START) + r"(.*?)" + re.escape(PERT_END), re.S)


def _mentioned_targets(text: str) -> list[list[str]]:
    out = []
    for match in _PERT_RE.finditer(text):
        words = [w for w in match.group(1).split() if w != CONTROL_PERT]
        if words:
            out.append(words)
    return out


class _HeldOut:
    """The perturbations (or contexts) of one held-out set: ``test`` or ``validation``."""

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
        return False

    def text(self, text: str) -> str | None:
        if self.kind not in ("unseen_single", "unseen_combo") or PERT_START not in text:
            return None
        for words in _mentioned_targets(text):
            upper = {w.upper() for w in words}
            if self.kind == "unseen_single" and upper & self.targets:
                return f"names {self.label} target(s) {sorted(upper & self.targets)}"
            if self.kind == "unseen_combo" and frozenset(upper) in self.combo_sets:
                return f"names {self.label} combination {sorted(upper)}"
        return None


class _AnyOf:
    """Held out when any of the sets holds it out (training rows: test and validation)."""

    def __init__(self, *held: _HeldOut):
        self.held = held

    def pert_label(self, perturbation: str, context: str) -> bool:
        return any(h.pert_label(perturbation, context) for h in self.held)

    def text(self, text: str) -> str | None:
        for h in self.held:
            why = h.text(text)
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
    held = _AnyOf(test_held, *([validation_held] if validation_held.perts else []))
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
                why = held.text(text)
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
                    why = rule.text(message["content"])
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
                why = held.text(message["content"])
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
    _fail(problems)
    checked["test_cells"] = len(test_cells)
    checked["validation_cells"] = len(validation_cells)
    return checked
