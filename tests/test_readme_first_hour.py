"""The README's first steps say what a new user needs: a venv, which torch, which extra."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quick_start() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Quick start") : text.index("## The stages")]


def test_quick_start_names_the_venv_the_cpu_torch_and_the_extras():
    quick = _quick_start()
    assert "python -m venv .venv && . .venv/bin/activate" in quick
    assert 'pip install torch==2.13.0 && pip install -e ".[dev]" && cellrlhf demo' in quick
    assert "--index-url\nhttps://download.pytorch.org/whl/cpu" in quick or (
        "--index-url https://download.pytorch.org/whl/cpu" in quick
    )
    assert "CUDA build on Linux" in quick and "python -m pytest -q" in quick
    pyproject = (ROOT / "pyproject.toml").read_text()
    extras = pyproject[pyproject.index("[project.optional-dependencies]") :]
    extras = extras[: extras.index("[project.scripts]")]
    train = next(line for line in extras.splitlines() if line.startswith("train = "))
    assert '".[train]"' in quick
    assert not any(name in train for name in ("deepspeed", "pytest", "playwright", "cell-eval"))
    for name in ("pytest", "playwright", "deepspeed", "cell-eval"):
        assert f'"{name}>=' in extras and name.lower() in quick.lower()


def test_hardware_advice_on_threads_matches_the_pipeline():
    text = (ROOT / "README.md").read_text()
    hardware = text[text.index("## Hardware") : text.index("## Performance and results")]
    assert "Do **not** set `OMP_NUM_THREADS`" in hardware
    assert "an inherited value is used for every\nstage" in hardware
