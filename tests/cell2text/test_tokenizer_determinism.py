"""``build_cell_tokenizer`` is bit-deterministic: same inputs, same tokenizer.json, same ids.

The corpus below made the ``tokenizers`` Unigram trainer's scores differ between calls (its EM
visits hash maps in a per-process random order); the builder must not pass that on.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

from cellrlhf.cell2text.tokenizer import build_cell_tokenizer

GENES = ("CD3E", "CD8A", "MS4A1", "HLA-DRA", "MT-CO1", "NKG7", "GNLY", "LYZ", "KLF1", "CEBPA")
TARGETS = ("SPI1", "GATA1")
WORDS = (
    "cell", "type", "perturbation", "knockdown", "gene", "expression", "predict", "what", "which",
    "after", "before", "treated", "dose", "control", "line", "answer", "the", "of", "a", "is",
    "this", "with",
)  # fmt: skip
SAMPLES = (
    "What type of cell is this? <cell> CD3E CD8A NKG7 </cell>",
    "Predict the expression after knockdown of <pert> KLF1 </pert>.",
    "the treated cell line with dose 0.1 of nutlin",
    "unseen words: zygote, épissage, 42",
)
REPO = Path(__file__).resolve().parents[2]


def _corpus() -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(300)]


def _build_and_save(out: Path) -> list[list[int]]:
    tokenizer = build_cell_tokenizer(GENES, extra_genes=TARGETS, texts=_corpus(), vocab_size=300)
    tokenizer.save_pretrained(str(out))
    return [tokenizer.encode(text) for text in SAMPLES]


_CHILD = """
import json, sys
from pathlib import Path
from tests.cell2text.test_tokenizer_determinism import _build_and_save
ids = _build_and_save(Path(sys.argv[1]))
print(json.dumps(ids))
"""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_builds_in_one_process_are_byte_identical(tmp_path):
    ids_a = _build_and_save(tmp_path / "a")
    ids_b = _build_and_save(tmp_path / "b")
    assert ids_a == ids_b
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_builds_in_separate_processes_are_byte_identical(tmp_path):
    import json

    here = _build_and_save(tmp_path / "here")
    results = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"}
        out = tmp_path / f"child{seed}"
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(out)],
            cwd=REPO,  # ``python -c`` imports from the working directory: the repository root
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        results.append((json.loads(done.stdout.strip().splitlines()[-1]), out))
    for ids, out in results:
        assert ids == here
        assert _digest(out / "tokenizer.json") == _digest(tmp_path / "here" / "tokenizer.json")


def test_text_pieces_are_ordered_by_score_then_piece_and_below_genes():
    tokenizer = build_cell_tokenizer(GENES, texts=_corpus(), vocab_size=300)
    model = tokenizer.backend_tokenizer.to_str()
    import json

    vocab = json.loads(model)["model"]["vocab"]
    genes = {"\u2581" + g for g in GENES}
    text = [(p, s) for p, s in vocab if s > -1e5 and p not in genes]
    assert text == sorted(text, key=lambda ps: (-ps[1], ps[0]))
    assert all(s < 0.0 for _, s in text)
    assert all(s == 0.0 for p, s in vocab if p in genes)
    # frequent corpus words are single pieces
    for word in ("perturbation", "expression", "knockdown"):
        assert tokenizer.tokenize(word) == ["\u2581" + word]
