"""The stage packages import each other in pipeline order only; library code never picks a
matplotlib backend.

Every module under ``cellrlhf/`` is parsed with :mod:`ast`, so imports inside functions count as
much as those at the top (``import cellrlhf.x.y``, ``from cellrlhf.x import y``, relative
imports, ``from cellrlhf import x``).

Stage packages, lowest first (a package may import the ones before it, never one after it)::

    metrics < cell2text < data < sampling < sft < reward < ppo < evaluation < hub < chat < pipeline

``sft`` owns the saved model directory (its files, the safetensors check, the model card every
stage writes on save), so ``reward`` and ``ppo`` save models without ``hub``; ``hub`` publishes
what the stages wrote (it reads ``cellrlhf evaluate`` directories for the card), and ``chat``
loads models and can push them (``CellLM.push_to_hub``), so ``hub`` sits below ``chat``.

Top-level modules are shared infrastructure:

- ``figures``, ``config_types``, ``cli_help``, ``third_party_noise``, ``trl_compat``,
  ``run_environment`` and the package root (``__version__``) may be imported by every module and import no other
  ``cellrlhf`` module but these;
- ``cli_errors`` (error messages and the guarded entry of every command) may be imported by the
  stages from ``data`` on: it reads the data stage's messages for damaged ``.h5ad`` files;
- ``cli`` and ``__main__`` (the command line; ``cli`` imports the stages lazily by name) are
  imported by no stage, only by ``cli_errors.stage_script_main`` and ``__main__``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

PACKAGE = Path(__file__).resolve().parents[1] / "cellrlhf"
STAGES = (
    "metrics",
    "cell2text",
    "data",
    "sampling",
    "sft",
    "reward",
    "ppo",
    "evaluation",
    "hub",
    "chat",
    "pipeline",
)
SHARED = frozenset(
    {
        "cellrlhf",
        "figures",
        "config_types",
        "cli_help",
        "third_party_noise",
        "trl_compat",
        "run_environment",
    }
)
ENTRY = frozenset({"cli", "__main__"})
# cli_errors reads cellrlhf.data.loading's messages: importable from the data stage on
CLI_ERRORS_FROM = "data"


class Import(NamedTuple):
    """One import statement of a library module."""

    module: str  # the importing module, e.g. ``cellrlhf.sft.model_dir``
    line: int
    target: str  # the imported module, e.g. ``cellrlhf.sft.model_card``


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _known_modules() -> set[str]:
    return {_module_name(p)[0] for p in PACKAGE.rglob("*.py")}


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The ``cellrlhf`` modules an import node loads (``from m import x``: ``m.x`` when it is a
    module, else ``m``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    found = []
    for alias in node.names:
        candidate = f"{source}.{alias.name}"
        found.append(candidate if candidate in known else source)
    return found


def library_imports() -> list[Import]:
    """Every import of a ``cellrlhf`` module by a ``cellrlhf`` module, functions included."""
    known = _known_modules()
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module, is_package = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for target in _targets(node, module, is_package, known):
                if target == "cellrlhf" or target.startswith("cellrlhf."):
                    out.append(Import(module, node.lineno, target))
    return sorted(set(out))


def _unit(module: str) -> str:
    """The stage package or top-level module that ``module`` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cellrlhf"


def allowed(importer: str, imported: str) -> bool:
    """Whether unit ``importer`` may import unit ``imported`` (see the module docstring)."""
    if importer == imported or imported in SHARED:
        return True
    if importer in SHARED:
        return False
    if importer in ENTRY or importer == "cli_errors":
        return True  # the command line reaches every stage
    if imported == "cli_errors":
        return importer in STAGES and STAGES.index(importer) >= STAGES.index(CLI_ERRORS_FROM)
    if imported in ENTRY:
        return False
    if importer in STAGES and imported in STAGES:
        return STAGES.index(imported) < STAGES.index(importer)
    return False  # a new top-level module: decide its place here first


def test_every_unit_is_placed():
    units = {_unit(m) for m in _known_modules()}
    unplaced = units - set(STAGES) - SHARED - ENTRY - {"cli_errors"}
    assert not unplaced, f"top-level units without a place in the import order: {unplaced}"


def test_imports_are_parsed_inside_functions_and_relative():
    found = {(i.module, i.target) for i in library_imports()}
    # a function-level import (cellrlhf.cli imports the error helpers inside main)
    assert ("cellrlhf.cli", "cellrlhf.cli_errors") in found
    # the stage packages import each other at all (the check below is not vacuous)
    assert any(_unit(m) != _unit(t) and _unit(t) in STAGES for m, t in found)


def test_stage_packages_import_in_pipeline_order():
    violations = [
        f"{i.module}:{i.line} imports {i.target}"
        for i in library_imports()
        if not allowed(_unit(i.module), _unit(i.target))
    ]
    order = " < ".join(STAGES)
    assert not violations, (
        f"imports against the pipeline order ({order}); move the code to the package that "
        "owns it:\n" + "\n".join(violations)
    )


def _calls_matplotlib_use(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "matplotlib":
            lines += [node.lineno for a in node.names if a.name == "use"]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            named = isinstance(owner, ast.Name) and owner.id in {"matplotlib", "mpl"}
            if node.func.attr == "use" and named:
                lines.append(node.lineno)
    return lines


def test_matplotlib_use_detector():
    tree = ast.parse("import matplotlib\ndef f():\n    matplotlib.use('Agg')\n")
    assert _calls_matplotlib_use(tree) == [3]
    assert _calls_matplotlib_use(ast.parse("from matplotlib import use\n")) == [1]
    assert _calls_matplotlib_use(ast.parse("style.use('x')\n")) == []


def test_no_library_module_picks_a_matplotlib_backend():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in _calls_matplotlib_use(ast.parse(path.read_text()))
    ]
    assert not found, (
        "matplotlib.use() in library code switches a notebook user's backend; draw on a "
        "Figure (cellrlhf.figures.subplots) instead:\n" + "\n".join(found)
    )
