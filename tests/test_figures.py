"""Library plots never touch a user's matplotlib backend."""

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cellrlhf"


def test_no_library_module_switches_the_backend():
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "matplotlib.use(" in p.read_text() or "import matplotlib.pyplot" in p.read_text()
    ]
    assert offenders == []


def test_plots_are_written_under_the_users_backend_unchanged(tmp_path):
    # a fresh interpreter: the user picked the "svg" backend (as a notebook picks inline)
    code = (
        "import matplotlib; matplotlib.use('svg')\n"
        "import pandas as pd\n"
        "from cellrlhf.evaluation.plots import plot_validity\n"
        "v = pd.DataFrame({'model': ['sft', 'grpo'], 'valid_cell_fraction': [0.5, 0.9],"
        " 'valid_fraction': [0.8, 1.0], 'distinct_sentence_fraction': [1.0, 1.0]})\n"
        f"out = plot_validity(v, __import__('pathlib').Path({str(tmp_path)!r}) / 'v.png')\n"
        "print(matplotlib.get_backend(), out.read_bytes()[:4])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "svg" and "PNG" in out.stdout
