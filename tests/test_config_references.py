"""Every config file the package, the configs and the docs name exists (a docstring or an
accelerate YAML that points a user at a missing file is a broken first step)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATTERN = re.compile(r"configs/[a-z_]+/[A-Za-z0-9_.-]+\.ya?ml")
# where users read config paths: library code, stage scripts, configs, README, docs, benchmarks
SOURCES = [
    *REPO.glob("cellrlhf/**/*.py"),
    *REPO.glob("*.py"),
    *REPO.glob("configs/**/*.yaml"),
    *REPO.glob("docs/**/*.md"),
    *REPO.glob("benchmarks/*.py"),
    REPO / "README.md",
]


def referenced_configs() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in SOURCES:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in PATTERN.findall(line):
                found.setdefault(match, []).append(f"{path.relative_to(REPO)}:{lineno}")
    return found


def test_every_named_config_file_exists():
    found = referenced_configs()
    assert len(found) > 20  # the scan sees the references (configs/data, sft, ppo, pipeline...)
    missing = {name: where for name, where in found.items() if not (REPO / name).is_file()}
    assert not missing, "named but missing: " + "; ".join(
        f"{name} ({', '.join(where)})" for name, where in sorted(missing.items())
    )


def test_the_scan_would_report_a_missing_file(tmp_path, monkeypatch):
    doc = tmp_path / "doc.md"
    doc.write_text("run `cellrlhf sft --config configs/sft/nowhere.yaml`\n")
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "SOURCES", [doc])
    monkeypatch.setattr(module, "REPO", tmp_path)
    assert referenced_configs() == {"configs/sft/nowhere.yaml": ["doc.md:1"]}
