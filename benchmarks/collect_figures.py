"""Assemble BENCHMARKS.md from the per-topic figure files in benchmarks/figures/.

Each benchmark script writes its own ``benchmarks/figures/<topic>.md`` (figures, machine, date and
the reproducing command); this script puts them in one page, in pipeline order.

    python benchmarks/collect_figures.py
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

ORDER = (
    "cell2text_encode",
    "cell2text_decode_tokenizer",
    "data_build",
    "sft",
    "sft_validity",
    "reward_metrics",
    "reward_model",
    "ppo",
    "rl_eval",
    "demo",
)

HEADER = """# Benchmarks and results

Every performance and quality figure of cellrlhf, each with its machine, date and the command that
reproduces it. Unless a section says otherwise the machine is the project's CI kind: a 2-core x86-64
CPU, 24 GB RAM, no GPU, `OMP_NUM_THREADS=1`. Side-by-side comparisons were measured in one run
(ratios), since the machine is shared and noisy; several figures were taken while other jobs loaded
it, which each section states. Sections are generated from `benchmarks/figures/*.md` by
`python benchmarks/collect_figures.py`.
"""


def demote(text: str, figures_dir: str) -> str:
    """Push headings one level down and make image/link paths relative to the repository root."""
    text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)
    return re.sub(
        r"(!?\[[^\]]*\]\()(?!https?:|/|benchmarks/)([^)]+\))", rf"\1{figures_dir}/\2", text
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", default="benchmarks/figures")
    parser.add_argument("--out", default="BENCHMARKS.md")
    args = parser.parse_args()
    figures = Path(args.figures)
    found = {p.stem: p for p in figures.glob("*.md")}
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    parts = [HEADER]
    parts += ["## Contents", ""] + [f"- {n}" for n in names] + [""]
    for name in names:
        parts.append(demote(found[name].read_text().strip(), args.figures) + "\n")
    Path(args.out).write_text("\n".join(parts))
    print(f"wrote {args.out} from {len(names)} figure files")


if __name__ == "__main__":
    main()
