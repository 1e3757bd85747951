from hypothesis import given
from hypothesis import strategies as st

from cellrlhf.cell2text.markup import (
    UNK_PERT,
    extract_cell,
    format_cell,
    format_perturbation,
    split_perturbation,
)


def test_format_cell_and_back():
    text = "Predicted: " + format_cell(" CD3E  CD8A ") + " done"
    assert format_cell("CD3E CD8A") == "<cell> CD3E CD8A </cell>"
    got = extract_cell(text)
    assert (got.sentence, got.found, got.closed) == ("CD3E CD8A", True, True)
    assert format_cell("") == "<cell> </cell>"


def test_unclosed_missing_and_garbage_cells():
    assert extract_cell("<cell> A B C").closed is False
    assert extract_cell("<cell> A B C").sentence == "A B C"
    bare = extract_cell("A  B\nC")
    assert (bare.sentence, bare.found, bare.closed) == ("A B C", False, False)
    assert extract_cell(None).sentence == ""
    assert extract_cell(42).sentence == "42"


def test_perturbation_words():
    assert split_perturbation("KLF1+ CEBPA+") == ["KLF1", "CEBPA"]
    assert format_perturbation(["KLF1", "CEBPA"]) == "<pert> KLF1 CEBPA </pert>"
    assert format_perturbation(["KLF1", "XYZ"], known={"KLF1"}) == f"<pert> KLF1 {UNK_PERT} </pert>"
    assert format_perturbation([], control=True) == "<pert> <control> </pert>"


@given(st.lists(st.from_regex(r"[A-Z][A-Z0-9\-]{0,7}", fullmatch=True), max_size=30))
def test_extract_inverts_format(genes):
    sentence = " ".join(genes)
    got = extract_cell("prefix " + format_cell(sentence) + " suffix <cell> other </cell>")
    assert got.sentence == sentence and got.closed


def test_a_nul_byte_becomes_a_storable_unknown_word(tmp_path):
    """A model can write the byte token <0x00>; its sentence must still be storable in .h5ad
    (this crashed the demo's evaluate stage: "VLEN strings do not support embedded NULLs")."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    cell = extract_cell("<cell> CD3E \x00 LYZ\x00 </cell>")
    assert cell.sentence == "CD3E \ufffd LYZ\ufffd" and cell.closed
    assert extract_cell("no cell \x00").sentence == "no cell \ufffd"
    obs = pd.DataFrame({"cell_sentence": [cell.sentence]}, index=["a"])
    ad.AnnData(np.zeros((1, 1), dtype=np.float32), obs=obs).write_h5ad(tmp_path / "p.h5ad")
    assert ad.read_h5ad(tmp_path / "p.h5ad").obs["cell_sentence"].tolist() == [cell.sentence]
