"""``cellrlhf chat`` driven as a program in a pseudo-terminal, plus its command handling."""

from __future__ import annotations

import io
import os
import sys

import pytest
from tiny_cell_model import TARGETS

PROMPT = r"\] > "


@pytest.fixture(scope="module")
def pbmc_file(pbmc, tmp_path_factory):
    path = tmp_path_factory.mktemp("repl") / "pbmc.h5ad"
    pbmc.write_h5ad(path)
    return path


@pytest.mark.slow
def test_repl_program_end_to_end(tiny_model_dir, pbmc_file, pbmc, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    import anndata as ad

    out = tmp_path / "pred.h5ad"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "TERM": "dumb"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "cellrlhf", "chat", "--model", str(tiny_model_dir), "--adata", str(pbmc_file)],
        env=env,
        encoding="utf-8",
        timeout=120,
        dimensions=(50, 200),
    )
    try:
        child.expect(r"model .* \(sft, 765 genes\); data .*: 700 cells")
        child.expect(r"\[no cell\] > ")
        child.sendline("/cell 3")
        child.expect(rf"cell {pbmc.obs_names[3]} \(row 3\): \d+ expressed genes")
        child.expect(PROMPT)
        child.sendline("What cell type is this cell?")
        child.expect(PROMPT)
        answer = child.before.split("?", 1)[-1].strip()
        assert answer, "no answer was printed"
        child.sendline(f"/cell {pbmc.obs_names[5]}")  # by barcode
        child.expect(r"\(row 5\)")
        child.expect(PROMPT)
        child.sendline("/cell NOPE")
        child.expect(r"error: no cell named 'NOPE' in the data \(700 cells")
        child.sendline("/cell 9999")
        child.expect(r"error: cell index 9999 is out of range")
        child.sendline("/genes CD3E NOTAGENE")
        child.expect(r"error: 1 gene\(s\) are not in the model's vocabulary of 765 genes: NOTAGENE")
        child.sendline("/annotate")
        child.expect(r"\(score \d\.\d{3}\)")
        child.sendline(f"/perturb {TARGETS[0]} context=Dendritic")
        child.expect(r"valid gene fraction \d\.\d\d")
        child.expect(r"up: ")
        child.expect(PROMPT)
        child.sendline(f"/save {out}")
        child.expect(r"saved 1 cell\(s\) to ")
        child.sendline("/history")
        child.expect(r"\(no conversation yet\)")  # a new cell started a new conversation
        child.sendline("/info")
        child.expect(r"perturbation targets: CD79A, NKG7, SPI1")
        child.sendline("/help")
        child.expect(r"/perturb TARGETS")
        child.sendline("/frobnicate")
        child.expect(r"error: unknown command /frobnicate")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    saved = ad.read_h5ad(out)
    assert saved.n_obs == 1 and saved.n_vars == 765
    assert saved.obs["perturbation"].iloc[0] == TARGETS[0]
    assert saved.obs["input_cell"].iloc[0] == pbmc.obs_names[5]


def test_repl_program_reports_a_bad_model_path(tmp_path):
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "cellrlhf", "chat", "--model", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2
    assert "neither a model directory nor a Hugging Face Hub id" in result.stderr


@pytest.fixture
def repl(lm, pbmc):
    from cellrlhf.chat.repl import Repl
    from cellrlhf.chat.session import ChatSession

    out = io.StringIO()
    return Repl(ChatSession(lm, pbmc), out=out, generation={"max_new_tokens": 16}), out


def test_repl_conversation_keeps_history_and_cell(repl):
    r, out = repl
    r.handle("/cell 7")
    first = r.session.cell.sentence
    r.handle("What is this cell?")
    r.handle("And what else?")
    msgs = r.session.messages
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[0]["content"] == f"What is this cell?\n<cell> {first} </cell>"
    assert msgs[2]["content"] == "And what else?"  # follow-ups do not repeat the cell
    r.handle("/clear")
    assert r.session.messages == [] and r.session.cell.sentence == first
    assert r.prompt == f"[{r.session.cell.cell_id}] > "


def test_repl_errors_do_not_end_the_loop(repl):
    r, out = repl
    assert r.handle("/annotate") is True
    assert "error: no cell selected" in out.getvalue()
    assert r.handle("/save x.h5ad") is True
    assert "nothing to save yet" in out.getvalue()
    assert r.handle("/perturb") is True
    assert "usage: /perturb" in out.getvalue()
    assert r.handle('/generate "CD14+ Monocyte" 2 temperature=hot') is True
    assert "not a valid float" in out.getvalue()
    assert r.handle("/quit") is False


def test_repl_generate_and_save(repl, tmp_path):
    r, out = repl
    r.handle('/generate "CD19+ B" 3 seed=2')
    assert "3 CD19+ B cell(s)" in out.getvalue()
    r.handle(f"/save {tmp_path / 'gen.txt'}")
    assert "use a .h5ad file name" in out.getvalue()
    r.handle(f"/save {tmp_path / 'gen.h5ad'}")
    assert (tmp_path / "gen.h5ad").is_file()
