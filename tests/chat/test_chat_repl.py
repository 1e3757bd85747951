"""``cellrlhf chat`` driven as a program in a pseudo-terminal, plus its command handling."""

from __future__ import annotations

import io
import os
import sys
import time

import pytest

from tests.fixtures.tiny_cell_model import TARGETS

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


def _spawn_repl(pexpect, model_dir, data_file):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "TERM": "dumb"}
    return pexpect.spawn(
        sys.executable,
        ["-m", "cellrlhf", "chat", "--model", str(model_dir), "--adata", str(data_file)],
        env=env,
        encoding="utf-8",
        timeout=120,
        dimensions=(50, 200),
    )


@pytest.mark.slow
def test_repl_ctrl_c_cancels_the_generation_and_keeps_the_conversation(tiny_model_dir, pbmc_file):
    pexpect = pytest.importorskip("pexpect")
    child = _spawn_repl(pexpect, tiny_model_dir, pbmc_file)
    try:
        child.expect(r"\[no cell\] > ")
        child.sendline("/cell 3")
        child.expect(PROMPT)
        child.sendline("What cell type is this cell?")
        child.expect(PROMPT)
        child.sendline('/generate "CD19+ B" 1000')
        child.expect(r"generate:\s+\d+%")  # the progress bar: generation has started
        time.sleep(0.5)
        child.sendintr()  # Ctrl-C
        child.expect(r"cancelled")
        child.expect(PROMPT)
        child.sendline("/history")
        child.expect(r"user: What cell type is this cell\?")
        child.expect(r"assistant: ")
        child.expect(PROMPT)
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


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


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/perturb SPI1 context=B samples=100000", "samples=100000 is out of range: give 1..16"),
        ("/perturb SPI1 context=B samples=0", "samples=0 is out of range: give 1..16"),
        ('/generate "CD19+ B" 100000', "N=100000 is out of range: give 1..1000"),
    ],
)
def test_repl_caps_samples_and_generated_cells(repl, line, message):
    r, out = repl
    r.handle("/cell 2")
    r.handle(line)
    assert f"error: {message}" in out.getvalue()
    assert r.session.last_result is None  # nothing was generated


def test_repl_question_about_a_cell_without_one_says_a_cell_is_needed(repl):
    r, out = repl
    r.handle("What happens to this cell if KLF1 is activated?")
    text = out.getvalue()
    assert "error: this question is about a cell, but no cell is selected" in text
    assert "</pert>" not in text and "</cell>" not in text
    assert r.session.messages == []


def _lm_with_manifest(lm, **changes):
    from cellrlhf.chat import CellLM

    manifest = {**lm.data_manifest, **changes}
    return CellLM(
        lm.model, lm.tokenizer, lm.vocab, lm.decoder, info=lm.info, data_manifest=manifest
    )


@pytest.mark.parametrize(
    ("changes", "expected_type"),
    [
        # a data config mapping perturbation_type to a column, with the counts the build records
        (
            {
                "config": {"schema": {"columns": {"perturbation_type": "screen_kind"}}},
                "perturbation_types": {"CRISPRi": 3, "CRISPRa": 40},
            },
            "CRISPRa",
        ),
        # the same mapping in a manifest from before the counts were recorded
        ({"config": {"schema": {"columns": {"perturbation_type": "screen_kind"}}}}, "other"),
    ],
)
def test_perturb_does_not_call_a_mapped_perturbation_type_unknown(
    lm, pbmc, caplog, changes, expected_type
):
    import logging

    from cellrlhf.chat.repl import Repl
    from cellrlhf.chat.session import ChatSession

    out = io.StringIO()
    r = Repl(ChatSession(_lm_with_manifest(lm, **changes), pbmc), out=out)
    r.handle("/cell 1")
    with caplog.at_level(logging.INFO, logger="cellrlhf"):
        r.handle(f"/perturb {TARGETS[0]} context=B")
    assert "valid gene fraction" in out.getvalue()
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    params = r.session.last_result.uns["cellrlhf_prediction"]["params"]
    assert (params["perturbation_type"] or "other") == expected_type
