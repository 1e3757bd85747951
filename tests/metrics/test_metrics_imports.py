"""cellrlhf.metrics sits at the bottom of the import graph: no other cellrlhf package below it."""

import ast
from pathlib import Path

import cellrlhf.metrics

ALLOWED_THIRD_PARTY = {"numpy", "scipy", "pandas", "anndata"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):  # functions' imports included
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_metrics_imports_only_itself_and_numeric_libraries():
    package = Path(cellrlhf.metrics.__file__).parent
    files = sorted(package.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "cellrlhf":
                assert name.startswith("cellrlhf.metrics"), f"{path.name} imports {name}"
            else:
                assert top == "__future__" or top in ALLOWED_THIRD_PARTY or top in {
                    "collections", "dataclasses", "math", "typing"
                }, f"{path.name} imports {name}"  # fmt: skip


def test_all_names_the_modules():
    assert sorted(cellrlhf.metrics.__all__) == sorted(
        p.stem for p in Path(cellrlhf.metrics.__file__).parent.glob("*.py") if p.stem != "__init__"
    )
